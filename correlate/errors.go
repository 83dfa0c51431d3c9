package correlate

import "errors"

var (
	// ErrCorrupt wraps every decoding failure: the bytes are not what this
	// package's encoders produce (truncated, forged or from another format).
	ErrCorrupt = errors.New("correlate: corrupt encoding")
	// ErrInvalid wraps every validation failure of an event (see FieldError).
	ErrInvalid = errors.New("correlate: invalid event")
	// ErrConfig wraps every configuration error.
	ErrConfig = errors.New("correlate: invalid config")
	// ErrVersion is returned when an encoding carries a format version this
	// build does not understand.
	ErrVersion = errors.New("correlate: unknown encoding version")
	// ErrReshard wraps every refused split or handoff adoption
	// (Result.ReshardErr).
	ErrReshard = errors.New("correlate: resharding step refused")
)
