#!/usr/bin/env python3
"""cosign_ref -- independent reference implementation of cosign's key-based
signature format, used to prove that Soma's signer/verifier interoperates.

Written from cosign's *published* format (specs/SIGNATURE_SPEC.md, the simple
signing payload format, and the go-securesystemslib "encrypted" envelope); it
deliberately shares no code with Soma.  Dependencies: ``cryptography``,
``pynacl`` and the standard library (urllib for the registry API).

Format summary (see README.md in this directory for sources):

* Public key: PEM "PUBLIC KEY" = DER SubjectPublicKeyInfo, ECDSA P-256.
* Private key: PEM "ENCRYPTED SIGSTORE PRIVATE KEY" (written; cosign >= 2.x)
  or "ENCRYPTED COSIGN PRIVATE KEY" (legacy label; read, or written on request).
  The PEM body is the UTF-8 JSON envelope
      {"kdf":{"name":"scrypt","params":{"N":..,"r":8,"p":1},"salt":"<b64>"},
       "cipher":{"name":"nacl/secretbox","nonce":"<b64>"},
       "ciphertext":"<b64>"}
  key = scrypt(password, salt, N, r, p, dkLen=32); ciphertext =
  NaCl secretbox(key, nonce) over the PKCS#8 DER of the private key, i.e.
  16-byte Poly1305 tag || XSalsa20 stream ciphertext (nonce NOT prepended).
  Base64 is standard alphabet with padding (Go encoding/json for []byte).
* Signature storage: OCI image manifest at tag "sha256-<hex>.sig" in the
  same repository; one layer per signature, mediaType
  "application/vnd.dev.cosign.simplesigning.v1+json", whose blob is the
  payload bytes and whose annotation "dev.cosignproject.cosign/signature" is
  base64(ASN.1 DER ECDSA-P256-SHA256 signature over the payload bytes).
* Payload: simple signing JSON
      {"critical":{"identity":{"docker-reference":"<host>/<repo>"},
                   "image":{"docker-manifest-digest":"sha256:<hex>"},
                   "type":"cosign container image signature"},
       "optional":null}
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Tuple

import nacl.exceptions
import nacl.secret
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

# --------------------------------------------------------------------------
# Constants (all taken from the published cosign / OCI / securesystemslib
# formats; see README.md)
# --------------------------------------------------------------------------

PEM_TYPE_SIGSTORE = "ENCRYPTED SIGSTORE PRIVATE KEY"  # written by cosign >= 2
PEM_TYPE_COSIGN = "ENCRYPTED COSIGN PRIVATE KEY"  # legacy label, still read
PEM_TYPE_PUBLIC = "PUBLIC KEY"
ENCRYPTED_PEM_TYPES = (PEM_TYPE_SIGSTORE, PEM_TYPE_COSIGN)

KDF_NAME = "scrypt"
CIPHER_NAME = "nacl/secretbox"
SALT_LEN = 32
NONCE_LEN = 24  # nacl.secret.SecretBox.NONCE_SIZE
BOX_KEY_LEN = 32
BOX_OVERHEAD = 16  # Poly1305 tag, placed before the ciphertext

# go-securesystemslib/encrypted only *accepts* these three (N, r, p) sets when
# decrypting (anything else is rejected as a DoS guard), so we do the same.
#   Legacy   N=2^15   -- what cosign wrote before securesystemslib v0.7 and
#                        the value the Soma brief specifies.
#   Standard N=2^16   -- the default that current cosign (securesystemslib
#                        >= v0.7.0, cosign go.mod pins v0.9.x) *writes*.
#   OWASP    N=2^17
# CHOICE: we write Legacy (N=32768) by default because every cosign version
# ever released can read it (older readers accepted only that set).  Use
# --scrypt-n 65536 to produce byte-for-byte the parameters current cosign
# writes.  Both are read back.
SCRYPT_ALLOWED = ((32768, 8, 1), (65536, 8, 1), (131072, 8, 1))
DEFAULT_SCRYPT_N = 32768
SCRYPT_R = 8
SCRYPT_P = 1

OCI_MANIFEST_MT = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG_MT = "application/vnd.oci.image.config.v1+json"
OCI_INDEX_MT = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_MT = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST_MT = "application/vnd.docker.distribution.manifest.list.v2+json"
SIMPLESIGNING_MT = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"

MANIFEST_ACCEPT = ", ".join(
    [OCI_MANIFEST_MT, DOCKER_MANIFEST_MT, OCI_INDEX_MT, DOCKER_LIST_MT]
)

# go-containerregistry serialises a zero v1.Time as this string; cosign's
# signature config therefore carries it unless --record-creation-timestamp.
GO_ZERO_TIME = "0001-01-01T00:00:00Z"

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
DEFAULT_PASSWORD_ENV = "COSIGN_PASSWORD"


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class CosignRefError(Exception):
    """Base class for every error raised by this module."""


class KeyFormatError(CosignRefError):
    """The key file is not in a supported format."""


class KeyDecryptionError(CosignRefError):
    """Wrong password, or the encrypted envelope was tampered with."""


class RegistryError(CosignRefError):
    """Unexpected answer from the OCI registry."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class VerificationError(CosignRefError):
    """Base class for signature verification failures."""


class NoSignaturesError(VerificationError):
    """No signature manifest / no signature layers found."""


class BadSignatureError(VerificationError):
    """A signature did not verify with the given public key."""


class DigestMismatchError(VerificationError):
    """Signature is valid but the payload names a different digest."""


class PayloadError(VerificationError):
    """Payload is not a valid cosign simple-signing payload."""


# --------------------------------------------------------------------------
# Small helpers: base64, PEM, Go-compatible JSON, DER sniffing
# --------------------------------------------------------------------------


def b64e(data: bytes) -> str:
    """Standard base64 with padding, as Go's encoding/json emits []byte."""
    return base64.b64encode(data).decode("ascii")


def b64d(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeyFormatError(f"{what}: expected a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(f"{what}: invalid base64: {exc}") from None


def pem_encode(pem_type: str, body: bytes) -> bytes:
    """RFC 7468 PEM with 64-column lines (same layout as Go's encoding/pem)."""
    enc = b64e(body)
    lines = [enc[i : i + 64] for i in range(0, len(enc), 64)]
    return (
        f"-----BEGIN {pem_type}-----\n" + "\n".join(lines) + f"\n-----END {pem_type}-----\n"
    ).encode("ascii")


_PEM_RE = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL
)


def pem_decode(data: bytes) -> Tuple[str, bytes]:
    """Return (type, body) of the first PEM block in ``data``."""
    m = _PEM_RE.search(data)
    if not m:
        raise KeyFormatError("invalid pem block")
    body = m.group(2)
    if b":" in body.split(b"\n", 1)[0]:
        raise KeyFormatError("PEM headers are not supported")
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except ValueError as exc:
        raise KeyFormatError(f"invalid PEM base64: {exc}") from None
    return m.group(1).decode("ascii"), der


def go_json(obj, sort_keys: bool = False) -> bytes:
    """Serialise like Go's json.Marshal: compact, no ASCII escaping of
    non-ASCII, but HTML-unsafe characters escaped (<, >, &, U+2028/9)."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    # These characters can only occur inside JSON strings, so this is safe.
    s = (
        s.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
    return s.encode("utf-8")


def _der_header(der: bytes, pos: int) -> Tuple[int, int, int]:
    """Parse a DER TLV header -> (tag, content_start, content_len)."""
    if pos + 2 > len(der):
        raise KeyFormatError("truncated DER")
    tag = der[pos]
    ln = der[pos + 1]
    pos += 2
    if ln & 0x80:
        n = ln & 0x7F
        if n == 0 or n > 4 or pos + n > len(der):
            raise KeyFormatError("bad DER length")
        ln = int.from_bytes(der[pos : pos + n], "big")
        pos += n
    return tag, pos, ln


def is_pkcs8(der: bytes) -> bool:
    """True if ``der`` looks like PKCS#8 PrivateKeyInfo:
    SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING key, ... }.
    (SEC1 ECPrivateKey has an OCTET STRING where PKCS#8 has the algorithm
    SEQUENCE.)  cosign parses the decrypted bytes with
    x509.ParsePKCS8PrivateKey only, so SEC1/PKCS#1 plaintexts are errors."""
    try:
        tag, start, _ = _der_header(der, 0)
        if tag != 0x30:
            return False
        tag, s2, l2 = _der_header(der, start)  # version
        if tag != 0x02:
            return False
        tag, _, _ = _der_header(der, s2 + l2)  # AlgorithmIdentifier
        return tag == 0x30
    except KeyFormatError:
        return False


def _read_password(env_name: Optional[str]) -> bytes:
    """cosign takes the key password from $COSIGN_PASSWORD; an empty password
    is legal.  An *unset* variable is an error here (no interactive prompt)."""
    name = env_name or DEFAULT_PASSWORD_ENV
    if name not in os.environ:
        raise CosignRefError(f"environment variable {name} is not set")
    return os.environ[name].encode("utf-8")


# --------------------------------------------------------------------------
# go-securesystemslib "encrypted" envelope
# --------------------------------------------------------------------------


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    # OpenSSL needs ~128*r*(N+p) bytes; give it headroom.
    maxmem = 128 * r * (n + p) * 2 + (1 << 20)
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=BOX_KEY_LEN)


def encrypt_envelope(plaintext: bytes, password: bytes, scrypt_n: int = DEFAULT_SCRYPT_N) -> bytes:
    """Encrypt ``plaintext`` into the JSON envelope (bytes)."""
    if (scrypt_n, SCRYPT_R, SCRYPT_P) not in SCRYPT_ALLOWED:
        raise CosignRefError(
            f"scrypt N={scrypt_n} is not one of the parameter sets cosign accepts "
            f"({', '.join(str(a[0]) for a in SCRYPT_ALLOWED)})"
        )
    salt = os.urandom(SALT_LEN)
    nonce = os.urandom(NONCE_LEN)
    key = _scrypt(password, salt, scrypt_n, SCRYPT_R, SCRYPT_P)
    # PyNaCl's EncryptedMessage.ciphertext is tag||ciphertext without the
    # nonce, which is exactly what Go's secretbox.Seal(nil, ...) returns.
    sealed = nacl.secret.SecretBox(key).encrypt(plaintext, nonce).ciphertext
    # Key order follows the Go struct field order of the envelope so that the
    # output looks byte-for-byte like Go json.Marshal output.
    env = {
        "kdf": {
            "name": KDF_NAME,
            "params": {"N": scrypt_n, "r": SCRYPT_R, "p": SCRYPT_P},
            "salt": b64e(salt),
        },
        "cipher": {"name": CIPHER_NAME, "nonce": b64e(nonce)},
        "ciphertext": b64e(sealed),
    }
    return go_json(env)


def decrypt_envelope(envelope: bytes, password: bytes) -> bytes:
    """Decrypt the JSON envelope; raises KeyFormatError / KeyDecryptionError.

    Field names are matched exactly as cosign writes them ("kdf", "name",
    "params", "N", "r", "p", "salt", "cipher", "nonce", "ciphertext").  (Go's
    decoder would also accept other casings; no real key file uses them.)"""
    try:
        env = json.loads(envelope.decode("utf-8"))
        kdf = env["kdf"]
        params = kdf["params"]
        cipher = env["cipher"]
        kdf_name, cipher_name = kdf["name"], cipher["name"]
        n, r, p = params["N"], params["r"], params["p"]
        salt_b64, nonce_b64, ct_b64 = kdf["salt"], cipher["nonce"], env["ciphertext"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFormatError(f"malformed encrypted key envelope: {exc!r}") from None
    if kdf_name != KDF_NAME:
        raise KeyFormatError(f"unknown kdf name {kdf_name!r}")
    if cipher_name != CIPHER_NAME:
        raise KeyFormatError(f"unknown cipher name {cipher_name!r}")
    if (n, r, p) not in SCRYPT_ALLOWED:
        raise KeyFormatError(f"unsupported scrypt parameters N={n} r={r} p={p}")
    salt = b64d(salt_b64, "kdf.salt")
    nonce = b64d(nonce_b64, "cipher.nonce")
    sealed = b64d(ct_b64, "ciphertext")
    if len(nonce) != NONCE_LEN:
        raise KeyFormatError("incorrect nonce size")
    if len(sealed) < BOX_OVERHEAD:
        raise KeyFormatError("ciphertext too short")
    key = _scrypt(password, salt, n, r, p)
    try:
        return nacl.secret.SecretBox(key).decrypt(sealed, nonce)
    except nacl.exceptions.CryptoError:
        raise KeyDecryptionError("decryption failed (wrong password or corrupted key)") from None


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------


def _require_p256(key, what: str):
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        raise KeyFormatError(f"{what} is not an ECDSA key (only ECDSA P-256 is supported)")
    if not isinstance(key.curve, ec.SECP256R1):
        raise KeyFormatError(f"{what} uses curve {key.curve.name}; only P-256 is supported")
    return key


def public_key_pem(key) -> bytes:
    """PEM "PUBLIC KEY" (PKIX SubjectPublicKeyInfo) of a private/public key."""
    pub = key.public_key() if hasattr(key, "public_key") else key
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem_encode(PEM_TYPE_PUBLIC, der)


def encode_private_key(
    key: ec.EllipticCurvePrivateKey,
    password: bytes,
    pem_type: str = PEM_TYPE_SIGSTORE,
    scrypt_n: int = DEFAULT_SCRYPT_N,
) -> bytes:
    if pem_type not in ENCRYPTED_PEM_TYPES:
        raise KeyFormatError(f"unsupported pem type {pem_type!r}")
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem_encode(pem_type, encrypt_envelope(pkcs8, password, scrypt_n))


def generate_keypair(
    password: bytes, pem_type: str = PEM_TYPE_SIGSTORE, scrypt_n: int = DEFAULT_SCRYPT_N
) -> Tuple[bytes, bytes]:
    """Return (encrypted private key PEM, public key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return encode_private_key(key, password, pem_type, scrypt_n), public_key_pem(key)


def decrypt_private_key_der(pem_bytes: bytes, password: bytes) -> Tuple[str, bytes]:
    """Decrypt an encrypted cosign key file -> (pem type, PKCS#8 DER)."""
    pem_type, body = pem_decode(pem_bytes)
    if pem_type not in ENCRYPTED_PEM_TYPES:
        raise KeyFormatError(f"unsupported pem type: {pem_type}")
    der = decrypt_envelope(body, password)
    if not is_pkcs8(der):
        raise KeyFormatError("decrypted key is not PKCS#8 (cosign requires PKCS#8)")
    return pem_type, der


def load_private_key(pem_bytes: bytes, password: bytes) -> ec.EllipticCurvePrivateKey:
    _, der = decrypt_private_key_der(pem_bytes, password)
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(f"parsing private key: {exc}") from None
    return _require_p256(key, "private key")


def load_public_key(pem_bytes: bytes) -> ec.EllipticCurvePublicKey:
    pem_type, der = pem_decode(pem_bytes)
    if pem_type != PEM_TYPE_PUBLIC:
        raise KeyFormatError(f"expected a PUBLIC KEY PEM block, got {pem_type!r}")
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(f"parsing public key: {exc}") from None
    return _require_p256(key, "public key")


# --------------------------------------------------------------------------
# Payload and raw signatures
# --------------------------------------------------------------------------


def check_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest or ""):
        raise CosignRefError(f"invalid digest {digest!r} (want sha256:<64 lowercase hex>)")
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def signature_tag(digest: str) -> str:
    """Tag-based discovery: "sha256:abc" -> "sha256-abc.sig"."""
    return check_digest(digest).replace(":", "-") + ".sig"


def simple_signing_payload(
    docker_reference: str, digest: str, optional: Optional[Dict[str, object]] = None
) -> bytes:
    """The cosign simple-signing payload bytes.

    Go marshals this struct with fields in the order critical{identity, image,
    type}, optional -- which happens to be alphabetical -- and marshals the
    optional map with sorted keys; a nil map is ``null``.  sort_keys=True thus
    reproduces cosign's exact bytes."""
    check_digest(digest)
    obj = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": COSIGN_SIGNATURE_TYPE,
        },
        "optional": optional if optional else None,
    }
    return go_json(obj, sort_keys=True)


def parse_payload(payload: bytes) -> dict:
    """Parse and sanity-check a simple-signing payload; returns the dict."""
    try:
        obj = json.loads(payload.decode("utf-8"))
        crit = obj["critical"]
        typ = crit["type"]
        digest = crit["image"]["docker-manifest-digest"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PayloadError(f"payload is not a simple-signing document: {exc!r}") from None
    if typ != COSIGN_SIGNATURE_TYPE:
        raise PayloadError(f"payload critical.type is {typ!r}, want {COSIGN_SIGNATURE_TYPE!r}")
    if not isinstance(digest, str):
        raise PayloadError("payload docker-manifest-digest is not a string")
    return obj


def sign_bytes(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 over SHA-256(data); ASN.1 DER signature."""
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_bytes(pub: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> None:
    try:
        pub.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise BadSignatureError("invalid signature when validating ASN.1 encoded signature") from None


def sign_blob_b64(key, data: bytes) -> str:
    return b64e(sign_bytes(key, data))


def verify_blob_b64(pub, data: bytes, sig_b64: str) -> None:
    try:
        sig = base64.b64decode("".join(sig_b64.split()), validate=True)
    except ValueError:
        raise BadSignatureError("signature is not valid base64") from None
    verify_bytes(pub, data, sig)


# --------------------------------------------------------------------------
# Registry HTTP API v2 client
# --------------------------------------------------------------------------


def _parse_challenge(header: str) -> Tuple[str, Dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class Registry:
    """Minimal OCI distribution client: anonymous, Basic, or Bearer-token
    (token fetched with Basic credentials) auth; http or https."""

    def __init__(self, base_url: str, username: Optional[str] = None,
                 password: Optional[str] = None, timeout: float = 30.0):
        u = urllib.parse.urlparse(base_url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise CosignRefError(f"registry must be an http(s) URL, got {base_url!r}")
        self.base = f"{u.scheme}://{u.netloc}"
        self.host = u.netloc.rsplit("@", 1)[-1]
        self.username = username
        self.password = password
        self.timeout = timeout
        self._auth_header: Optional[str] = None
        # stdlib default handlers: redirects are followed for GET/HEAD only
        self._opener = urllib.request.build_opener()

    # -- transport -------------------------------------------------------
    def _basic(self) -> Optional[str]:
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode("utf-8")
        return "Basic " + b64e(raw)

    def _send(self, method, url, data, headers):
        req = urllib.request.Request(url, data=data, method=method)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if self._auth_header:
            # unredirected: never leak credentials to a redirect target
            req.add_unredirected_header("Authorization", self._auth_header)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read() if exc.fp else b""
            return exc.code, exc.headers, body
        except urllib.error.URLError as exc:
            raise RegistryError(f"{method} {url}: {exc.reason}") from None

    def _authenticate(self, challenge: str, scope_hint: str) -> bool:
        scheme, params = _parse_challenge(challenge or "")
        if scheme == "basic":
            hdr = self._basic()
            if hdr is None or hdr == self._auth_header:
                return False
            self._auth_header = hdr
            return True
        if scheme == "bearer" and "realm" in params:
            q = {}
            if "service" in params:
                q["service"] = params["service"]
            q["scope"] = params.get("scope") or scope_hint
            url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urllib.parse.urlencode(q)
            req = urllib.request.Request(url, method="GET")
            basic = self._basic()
            if basic:
                req.add_unredirected_header("Authorization", basic)
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    tok = json.loads(resp.read().decode("utf-8"))
            except (urllib.error.URLError, ValueError) as exc:
                raise RegistryError(f"token request to {params['realm']} failed: {exc}") from None
            token = tok.get("token") or tok.get("access_token")
            if not token or self._auth_header == "Bearer " + token:
                return False
            self._auth_header = "Bearer " + token
            return True
        return False

    def request(self, method: str, path_or_url: str, data: Optional[bytes] = None,
                headers: Optional[Dict[str, str]] = None, repo: str = ""):
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        status, hdrs, body = self._send(method, url, data, headers)
        if status == 401:
            scope = f"repository:{repo}:pull,push" if repo else ""
            if self._authenticate(hdrs.get("WWW-Authenticate", ""), scope):
                status, hdrs, body = self._send(method, url, data, headers)
        return status, hdrs, body

    @staticmethod
    def _fail(what: str, status: int, body: bytes):
        detail = body[:300].decode("utf-8", "replace").strip()
        hint = " (authentication required or credentials rejected)" if status == 401 else ""
        raise RegistryError(f"{what}: HTTP {status}{hint}: {detail}", status)

    # -- API -------------------------------------------------------------
    def ping(self) -> int:
        status, _, _ = self.request("GET", "/v2/")
        return status

    def blob_exists(self, repo: str, digest: str) -> bool:
        status, _, body = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo=repo)
        if status == 200:
            return True
        if status == 404:
            return False
        self._fail(f"HEAD blob {digest}", status, body)

    def push_blob(self, repo: str, data: bytes) -> str:
        """Monolithic upload: POST /blobs/uploads/ then PUT <location>?digest=."""
        digest = sha256_digest(data)
        if self.blob_exists(repo, digest):
            return digest
        status, hdrs, body = self.request("POST", f"/v2/{repo}/blobs/uploads/", data=b"",
                                          headers={"Content-Length": "0"}, repo=repo)
        if status != 202:
            self._fail(f"start blob upload in {repo}", status, body)
        loc = hdrs.get("Location")
        if not loc:
            raise RegistryError("blob upload: registry returned no Location")
        loc = urllib.parse.urljoin(self.base + "/", loc)
        loc += ("&" if "?" in loc else "?") + urllib.parse.urlencode({"digest": digest})
        status, _, body = self.request("PUT", loc, data=data, repo=repo, headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
        if status != 201:
            self._fail(f"complete blob upload {digest}", status, body)
        return digest

    def get_blob(self, repo: str, digest: str) -> bytes:
        status, _, body = self.request("GET", f"/v2/{repo}/blobs/{digest}", repo=repo)
        if status != 200:
            self._fail(f"GET blob {digest}", status, body)
        if sha256_digest(body) != digest:
            raise RegistryError(f"blob {digest}: content does not match its digest")
        return body

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        status, hdrs, rbody = self.request("PUT", f"/v2/{repo}/manifests/{reference}", data=body,
                                           headers={"Content-Type": media_type}, repo=repo)
        if status not in (200, 201):
            self._fail(f"PUT manifest {repo}:{reference}", status, rbody)
        digest = sha256_digest(body)
        served = hdrs.get("Docker-Content-Digest")
        if served and served != digest:
            raise RegistryError(f"registry reports manifest digest {served}, expected {digest}")
        return digest

    def get_manifest(self, repo: str, reference: str) -> Optional[Tuple[bytes, str, str]]:
        """-> (raw bytes, media type, digest) or None if not found."""
        status, hdrs, body = self.request("GET", f"/v2/{repo}/manifests/{reference}",
                                          headers={"Accept": MANIFEST_ACCEPT}, repo=repo)
        if status == 404:
            return None
        if status != 200:
            self._fail(f"GET manifest {repo}:{reference}", status, body)
        digest = sha256_digest(body)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"manifest {reference}: content does not match its digest")
        mt = (hdrs.get("Content-Type") or "").split(";")[0].strip()
        try:
            mt = json.loads(body).get("mediaType") or mt
        except (ValueError, AttributeError):
            pass
        return body, mt, digest


# --------------------------------------------------------------------------
# Signature manifests (cosign tag-based storage)
# --------------------------------------------------------------------------


def signature_config(layer_digests: List[str]) -> bytes:
    """cosign's config blob: the go-containerregistry ConfigFile of the empty
    image after mutate.Append of N layers (uncompressed, so diffID = digest),
    one empty History entry per layer, zero timestamps."""
    cfg = {
        "architecture": "",
        "created": GO_ZERO_TIME,
        "history": [{"created": GO_ZERO_TIME} for _ in layer_digests],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": list(layer_digests)},
        "config": {},
    }
    return go_json(cfg)


def signature_manifest(config_desc: dict, layers: List[dict]) -> bytes:
    return go_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MT,
        "config": config_desc,
        "layers": layers,
    })


def docker_reference_for(registry: Registry, repo: str) -> str:
    return f"{registry.host}/{repo}"


def sign_image(registry: Registry, repo: str, digest: str, key: ec.EllipticCurvePrivateKey,
               docker_reference: Optional[str] = None,
               optional: Optional[Dict[str, object]] = None,
               replace: bool = False, payload: Optional[bytes] = None) -> dict:
    """Sign ``repo@digest`` and push/extend the ``sha256-<hex>.sig`` manifest.

    Like cosign, an existing signature manifest is extended with a new layer
    (an identical payload+signature layer is not duplicated) unless
    ``replace`` is set.  ``payload`` overrides the generated payload (tests)."""
    check_digest(digest)
    if payload is None:
        payload = simple_signing_payload(docker_reference or docker_reference_for(registry, repo),
                                         digest, optional)
    sig_b64 = sign_blob_b64(key, payload)
    tag = signature_tag(digest)

    layers: List[dict] = []
    if not replace:
        existing = registry.get_manifest(repo, tag)
        if existing is not None:
            try:
                layers = list(json.loads(existing[0]).get("layers") or [])
            except (ValueError, AttributeError):
                layers = []
    payload_digest = registry.push_blob(repo, payload)
    new_layer = {
        "mediaType": SIMPLESIGNING_MT,
        "size": len(payload),
        "digest": payload_digest,
        "annotations": {SIGNATURE_ANNOTATION: sig_b64},
    }
    if not any(l.get("digest") == payload_digest and
               (l.get("annotations") or {}).get(SIGNATURE_ANNOTATION) == sig_b64 for l in layers):
        layers.append(new_layer)

    config = signature_config([l["digest"] for l in layers])
    config_digest = registry.push_blob(repo, config)
    manifest = signature_manifest(
        {"mediaType": OCI_CONFIG_MT, "size": len(config), "digest": config_digest}, layers)
    manifest_digest = registry.put_manifest(repo, tag, manifest, OCI_MANIFEST_MT)
    return {
        "tag": tag,
        "signature_manifest_digest": manifest_digest,
        "payload_digest": payload_digest,
        "signature": sig_b64,
        "payload": payload.decode("utf-8"),
        "layers": len(layers),
    }


def verify_image(registry: Registry, repo: str, digest: str,
                 pub: ec.EllipticCurvePublicKey) -> List[dict]:
    """Verify cosign signatures for ``repo@digest``.

    Returns the list of verified payloads (parsed JSON) if at least one layer
    carries a signature that verifies with ``pub`` over a payload naming
    ``digest``; otherwise raises NoSignaturesError, BadSignatureError,
    DigestMismatchError or PayloadError (most specific reason first)."""
    check_digest(digest)
    tag = signature_tag(digest)
    found = registry.get_manifest(repo, tag)
    if found is None:
        raise NoSignaturesError(f"no signatures found: {registry.host}/{repo}:{tag} does not exist")
    raw, media_type, _ = found
    if media_type not in (OCI_MANIFEST_MT, DOCKER_MANIFEST_MT, ""):
        raise NoSignaturesError(f"no signatures found: {tag} is a {media_type}, not an image manifest")
    try:
        layers = json.loads(raw).get("layers") or []
    except (ValueError, AttributeError):
        raise NoSignaturesError(f"no signatures found: {tag} is not valid JSON") from None

    verified: List[dict] = []
    failures: List[VerificationError] = []
    for i, layer in enumerate(layers):
        ldigest = layer.get("digest", "")
        sig_b64 = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
        if not sig_b64:
            failures.append(NoSignaturesError(f"layer {i} ({ldigest}) has no {SIGNATURE_ANNOTATION} annotation"))
            continue
        if not DIGEST_RE.match(ldigest):
            failures.append(PayloadError(f"layer {i} has unsupported digest {ldigest!r}"))
            continue
        payload = registry.get_blob(repo, ldigest)
        try:
            verify_blob_b64(pub, payload, sig_b64)
        except BadSignatureError as exc:
            failures.append(BadSignatureError(f"layer {i} ({ldigest}): {exc}"))
            continue
        try:
            obj = parse_payload(payload)
        except PayloadError as exc:
            failures.append(PayloadError(f"layer {i} ({ldigest}): {exc}"))
            continue
        claimed = obj["critical"]["image"]["docker-manifest-digest"]
        if claimed != digest:
            failures.append(DigestMismatchError(
                f"layer {i} ({ldigest}): payload docker-manifest-digest {claimed} != {digest}"))
            continue
        verified.append(obj)

    if verified:
        return verified
    if not failures:
        raise NoSignaturesError(f"no signatures found: {tag} has no layers")
    for cls in (DigestMismatchError, PayloadError, BadSignatureError, NoSignaturesError):
        picked = [f for f in failures if type(f) is cls]
        if picked:
            raise cls("; ".join(str(f) for f in failures))
    raise failures[0]


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _write(path: str, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _registry_from_args(args) -> Registry:
    password = None
    if args.username is not None:
        if args.registry_password_env not in os.environ:
            raise CosignRefError(f"environment variable {args.registry_password_env} is not set")
        password = os.environ[args.registry_password_env]
    return Registry(args.registry, args.username, password)


def _cmd_keygen(args) -> int:
    pem_type = PEM_TYPE_COSIGN if args.pem_type == "cosign" else PEM_TYPE_SIGSTORE
    priv, pub = generate_keypair(_read_password(args.password_env), pem_type, args.scrypt_n)
    try:
        _write(args.out_prefix + ".key", priv, 0o600, args.force)
        _write(args.out_prefix + ".pub", pub, 0o644, args.force)
    except FileExistsError as exc:
        raise CosignRefError(f"{exc.filename} exists (use --force to overwrite)") from None
    print(f"Private key written to {args.out_prefix}.key")
    print(f"Public key written to {args.out_prefix}.pub")
    return 0


def _cmd_load_key(args) -> int:
    key = load_private_key(_read(args.key), _read_password(args.password_env))
    sys.stdout.write(public_key_pem(key).decode("ascii"))
    return 0


def _parse_annotations(items) -> Optional[Dict[str, str]]:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise CosignRefError(f"annotation {item!r} is not KEY=VALUE")
        out[k] = v
    return out or None


def _cmd_sign(args) -> int:
    key = load_private_key(_read(args.key), _read_password(args.password_env))
    reg = _registry_from_args(args)
    res = sign_image(reg, args.repo, args.digest, key, docker_reference=args.docker_reference,
                     optional=_parse_annotations(args.annotation), replace=args.replace)
    print(json.dumps(res, indent=2))
    return 0


def _cmd_verify(args) -> int:
    pub = load_public_key(_read(args.pub))
    reg = _registry_from_args(args)
    payloads = verify_image(reg, args.repo, args.digest, pub)
    print(f"Verification for {reg.host}/{args.repo}@{args.digest} -- "
          f"{len(payloads)} valid signature(s)", file=sys.stderr)
    for p in payloads:
        print(json.dumps(p, separators=(",", ":")))
    return 0


def _cmd_sign_blob(args) -> int:
    key = load_private_key(_read(args.key), _read_password(args.password_env))
    sig = sign_blob_b64(key, _read(args.file))
    if args.output_signature:
        _write(args.output_signature, sig.encode("ascii"), 0o644, True)
    print(sig)
    return 0


def _cmd_verify_blob(args) -> int:
    pub = load_public_key(_read(args.pub))
    sig = args.signature
    if os.path.exists(sig):
        sig = _read(sig).decode("ascii", "replace")
    data = _read(args.file)
    verify_blob_b64(pub, data, sig)
    if args.digest:
        claimed = parse_payload(data)["critical"]["image"]["docker-manifest-digest"]
        if claimed != args.digest:
            raise DigestMismatchError(f"payload docker-manifest-digest {claimed} != {args.digest}")
    print("Verified OK")
    return 0


def _cmd_payload(args) -> int:
    sys.stdout.buffer.write(simple_signing_payload(args.docker_reference, args.digest,
                                                   _parse_annotations(args.annotation)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cosign_ref.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def pw(sp):
        sp.add_argument("--password-env", default=DEFAULT_PASSWORD_ENV,
                        help="env var holding the key password (default COSIGN_PASSWORD; may be empty)")

    def reg(sp):
        sp.add_argument("--registry", required=True, help="e.g. http://127.0.0.1:5000")
        sp.add_argument("--repo", required=True)
        sp.add_argument("--digest", required=True, help="sha256:<hex> of the signed manifest")
        sp.add_argument("--username", help="registry user (HTTP basic / token auth)")
        sp.add_argument("--registry-password-env", default="REGISTRY_PASSWORD",
                        help="env var holding the registry password (default REGISTRY_PASSWORD)")

    sp = sub.add_parser("keygen", help="generate an encrypted ECDSA P-256 key pair")
    sp.add_argument("--out-prefix", required=True)
    pw(sp)
    sp.add_argument("--scrypt-n", type=int, default=DEFAULT_SCRYPT_N, choices=[a[0] for a in SCRYPT_ALLOWED])
    sp.add_argument("--pem-type", choices=["sigstore", "cosign"], default="sigstore")
    sp.add_argument("--force", action="store_true")
    sp.set_defaults(fn=_cmd_keygen)

    sp = sub.add_parser("load-key", help="decrypt a key and print its public key PEM")
    sp.add_argument("--key", required=True)
    pw(sp)
    sp.set_defaults(fn=_cmd_load_key)

    sp = sub.add_parser("sign", help="sign repo@digest and push the .sig manifest")
    sp.add_argument("--key", required=True)
    pw(sp)
    reg(sp)
    sp.add_argument("--docker-reference", help="override critical.identity.docker-reference")
    sp.add_argument("--annotation", "-a", action="append", help="KEY=VALUE for payload 'optional'")
    sp.add_argument("--replace", action="store_true", help="replace instead of appending signatures")
    sp.set_defaults(fn=_cmd_sign)

    sp = sub.add_parser("verify", help="verify the .sig manifest of repo@digest")
    sp.add_argument("--pub", "--key", dest="pub", required=True)
    reg(sp)
    sp.set_defaults(fn=_cmd_verify)

    sp = sub.add_parser("sign-blob", help="base64 ECDSA-P256-SHA256 signature of a file")
    sp.add_argument("--key", required=True)
    pw(sp)
    sp.add_argument("--output-signature")
    sp.add_argument("file")
    sp.set_defaults(fn=_cmd_sign_blob)

    sp = sub.add_parser("verify-blob", help="verify a base64 signature over a file")
    sp.add_argument("--pub", "--key", dest="pub", required=True)
    sp.add_argument("--signature", required=True, help="file containing base64, or base64 itself")
    sp.add_argument("--digest", help="also require the file (a payload) to name this digest")
    sp.add_argument("file")
    sp.set_defaults(fn=_cmd_verify_blob)

    sp = sub.add_parser("payload", help="print the simple-signing payload for a digest")
    sp.add_argument("--docker-reference", required=True)
    sp.add_argument("--digest", required=True)
    sp.add_argument("--annotation", "-a", action="append")
    sp.set_defaults(fn=_cmd_payload)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except VerificationError as exc:
        print(f"error: verification failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (CosignRefError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
