package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/elixirscope/scope/internal/atomicfile"
)

// File names inside a certificate directory (scope cert -dir DIR).
const (
	CACert = "ca.crt"
	CAKey  = "ca.key"
)

// Lifetimes of the certificates scope cert creates. The CA outlives many
// rotations of the certificates it signs; a node or client certificate is
// rotated (SIGHUP, no restart) well within its year.
const (
	CALifetime   = 10 * 365 * 24 * time.Hour
	LeafLifetime = 365 * 24 * time.Hour
	// backdate absorbs clock skew between the machine that signs and
	// the ones that verify.
	backdate = time.Hour
)

// NodeFiles returns the certificate and key file names of node name.
func NodeFiles(name string) (cert, key string) {
	return "node." + name + ".crt", "node." + name + ".key"
}

// ClientFiles returns the certificate and key file names of client name.
func ClientFiles(name string) (cert, key string) {
	return "client." + name + ".crt", "client." + name + ".key"
}

// validName is what a node or client name in a certificate may be: it
// becomes a file name and a URI path segment.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// CheckName reports whether name can be named by a certificate.
func CheckName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("%w: name %q: want 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrCert, name)
	}
	return nil
}

// InitCA creates a new certificate authority in dir (created 0700 if
// missing): ca.crt and ca.key (0600). Existing files are kept unless force.
func InitCA(dir string, force bool) (certPath string, err error) {
	certPath, keyPath := filepath.Join(dir, CACert), filepath.Join(dir, CAKey)
	if err := writable(dir, force, certPath, keyPath); err != nil {
		return "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	tmpl, err := template("Scope CA", CALifetime)
	if err != nil {
		return "", err
	}
	tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.MaxPathLenZero = true, true, true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", err
	}
	return certPath, writePair(certPath, keyPath, der, key)
}

// IssueNode signs a node certificate for name with dir's CA: it names the
// node (URI scope://node/NAME, and CN NAME) and the hosts clients dial it
// at (IP addresses and DNS names, for hostname verification), and serves
// both as a server and as a client certificate (nodes dial each other).
func IssueNode(dir, name string, hosts []string, force bool) (certPath, keyPath string, err error) {
	if len(hosts) == 0 {
		return "", "", fmt.Errorf("%w: a node certificate needs at least one host (-host 127.0.0.1,node1.example.com)", ErrCert)
	}
	crt, key := NodeFiles(name)
	return issue(dir, name, "node", hosts, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, crt, key, force)
}

// IssueClient signs a client certificate for name with dir's CA (URI
// scope://client/NAME, CN NAME). It is refused wherever a node is expected.
func IssueClient(dir, name string, force bool) (certPath, keyPath string, err error) {
	crt, key := ClientFiles(name)
	return issue(dir, name, "client", nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, crt, key, force)
}

func issue(dir, name, kind string, hosts []string, usage []x509.ExtKeyUsage, crtName, keyName string, force bool) (string, string, error) {
	if err := CheckName(name); err != nil {
		return "", "", err
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return "", "", err
	}
	certPath, keyPath := filepath.Join(dir, crtName), filepath.Join(dir, keyName)
	if err := writable(dir, force, certPath, keyPath); err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl, err := template(name, LeafLifetime)
	if err != nil {
		return "", "", err
	}
	if tmpl.NotAfter.After(caCert.NotAfter) {
		tmpl.NotAfter = caCert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = usage
	tmpl.URIs = []*url.URL{{Scheme: uriScheme, Host: kind, Path: "/" + name}}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return "", "", err
	}
	return certPath, keyPath, writePair(certPath, keyPath, der, key)
}

func template(cn string, lifetime time.Duration) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	return &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn, Organization: []string{"Scope"}},
		NotBefore: now.Add(-backdate), NotAfter: now.Add(lifetime)}, nil
}

// loadCA reads dir's CA certificate and key.
func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v (create the CA first: scope cert init -dir %s)", ErrCert, err, dir)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKey))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v (the CA key signs certificates: run scope cert where it is)", ErrCert, err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("%w: %s or %s in %s: no PEM block", ErrCert, CACert, CAKey, dir)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrCert, CACert, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrCert, CAKey, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("%w: %s does not hold the key of %s", ErrCert, CAKey, CACert)
	}
	return cert, key, nil
}

// writable creates dir if needed and refuses to overwrite any of files
// unless force.
func writable(dir string, force bool, files ...string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if force {
		return nil
	}
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			return fmt.Errorf("%w: %s exists: pass -force to overwrite it", ErrCert, f)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// writePair writes the certificate (0644) and its PKCS#8 key (0600). The
// key goes through a temporary file renamed into place, so a key file
// never exists with wider permissions or half written.
func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return atomicfile.Write(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}
