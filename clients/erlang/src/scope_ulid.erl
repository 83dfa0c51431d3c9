%% scope_ulid: ULIDs (https://github.com/ulid/spec) for client-assigned
%% event ids: 48 bits of milliseconds since the Unix epoch, then 80 random
%% bits (crypto:strong_rand_bytes), 26 characters of Crockford base32. A
%% resend of an event carries the same id, so Scope stores it once.
-module(scope_ulid).

-export([new/1, encode/2]).

%% new/1 returns a fresh ULID for the wall-clock time Ms (milliseconds).
new(Ms) ->
    encode(Ms, crypto:strong_rand_bytes(10)).

%% encode/2 renders a timestamp and 10 random bytes.
encode(Ms, <<Rand:80>>) when is_integer(Ms), Ms >= 0, Ms < 1 bsl 48 ->
    <<<<(digit(D))>> || <<D:5>> <= <<0:2, Ms:48, Rand:80>> >>.

digit(D) -> element(D + 1, {$0, $1, $2, $3, $4, $5, $6, $7, $8, $9, $A, $B, $C, $D, $E, $F, $G, $H,
                            $J, $K, $M, $N, $P, $Q, $R, $S, $T, $V, $W, $X, $Y, $Z}).
