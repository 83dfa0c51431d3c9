// Package tlsconf builds the TLS configurations of a Scope agent and of
// its clients, and creates the certificates they use (scope cert).
//
// # Identities
//
// One certificate authority (the -tls-ca file) signs every certificate of
// a cluster. A node certificate names its node with the URI SAN
// scope://node/NAME (and CN NAME, for people reading it); it carries the
// IP addresses and DNS names clients dial the node at, and is valid as a
// server and as a client certificate. A client certificate names its user
// with scope://client/NAME and is valid only as a client certificate.
// The URI decides what a certificate is: a client certificate never
// passes where a node is expected, whatever its CN.
//
// # Where each is checked
//
//   - The public API listener (HTTP/1.1 and HTTP/2 through ALPN) verifies
//     a client certificate if one is sent (required with -tls-client-auth)
//     against the CA.
//   - The raft listener and NodeService accept only node certificates of
//     the CA (NodeServerConfig, RequireNode).
//   - A node dialing another node (DialNode) verifies the peer's
//     certificate against the CA, requires a node certificate, and, when
//     gossip places members at the dialed address, requires it to name one
//     of them: a node cannot answer for another. Host names are not
//     checked between nodes: the node name is the identity.
//   - A node's own certificate must name the node (-name) and chain to
//     the CA, checked at start and at every reload.
//
// # Reloading
//
// A Reloader holds the certificate, key and CA pool behind an atomic
// pointer. Every configuration it hands out reads the current value at
// each handshake (GetConfigForClient, GetClientCertificate,
// VerifyConnection), so Reload (on SIGHUP) takes effect for every new
// connection without a restart; connections already open keep the
// certificates they were made with. A reload that fails keeps the
// previous material.
package tlsconf
