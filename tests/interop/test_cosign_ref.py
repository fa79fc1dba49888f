#!/usr/bin/env python3
"""End-to-end test of cosign_ref.py against a real local OCI registry.

Run:  python3 -m unittest -v tests/interop/test_cosign_ref.py
      (or: python3 tests/interop/test_cosign_ref.py)

Needs: python3 with ``cryptography`` and ``pynacl``, and the Debian
``docker-registry`` binary (distribution v2) on PATH or in $DOCKER_REGISTRY_BIN.
Registry tests are skipped (not failed) if the binary is missing, unless
COSIGN_REF_REQUIRE_REGISTRY=1.

Keys and signatures written by Soma are checked against this reference by
Soma's own interop tests (tests/tests/), which call this tool.
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cosign_ref as cr  # noqa: E402

TOOL = os.path.join(HERE, "cosign_ref.py")
PASSWORD = "correct horse battery staple"
REGISTRY_BIN = os.environ.get("DOCKER_REGISTRY_BIN") or shutil.which("docker-registry")
REQUIRE_REGISTRY = os.environ.get("COSIGN_REF_REQUIRE_REGISTRY") == "1"

ARTIFACT_CONFIG_MT = "application/vnd.wasm.config.v0+json"
WASM_LAYER_MT = "application/wasm"


def run_tool(*args, env_extra=None):
    env = dict(os.environ)
    env["TEST_KEY_PW"] = PASSWORD
    env.update(env_extra or {})
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          env=env, timeout=120)


def slurp(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRegistry:
    """`docker-registry serve` on a free loopback port with temp storage."""

    def __init__(self, workdir: str, htpasswd_line: str = None):
        self.dir = tempfile.mkdtemp(prefix="registry-", dir=workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        storage = os.path.join(self.dir, "storage")
        os.mkdir(storage)
        cfg = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {storage}",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
        ]
        if htpasswd_line:
            htpath = os.path.join(self.dir, "htpasswd")
            with open(htpath, "w") as fh:
                fh.write(htpasswd_line + "\n")
            cfg += ["auth:", "  htpasswd:", "    realm: test-realm", f"    path: {htpath}"]
        self.config = os.path.join(self.dir, "config.yml")
        with open(self.config, "w") as fh:
            fh.write("\n".join(cfg) + "\n")
        self.log_path = os.path.join(self.dir, "registry.log")
        self.proc = None

    def start(self):
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", self.config], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited early:\n{self.log()}")
            try:
                urllib.request.urlopen(self.url + "/v2/", timeout=1).close()
                return self
            except urllib.error.HTTPError as exc:  # 401 => up, auth enabled
                if exc.code == 401:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"registry did not come up:\n{self.log()}")

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()


def push_test_artifact(reg: cr.Registry, repo: str, content: bytes) -> str:
    """Push a small OCI artifact (config + one application/wasm layer)."""
    layer_digest = reg.push_blob(repo, content)
    config = b"{}"
    config_digest = reg.push_blob(repo, config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": cr.OCI_MANIFEST_MT,
        "config": {"mediaType": ARTIFACT_CONFIG_MT, "size": len(config), "digest": config_digest},
        "layers": [{"mediaType": WASM_LAYER_MT, "size": len(content), "digest": layer_digest,
                    "annotations": {"org.opencontainers.image.title": "capsule.wasm"}}],
    }, separators=(",", ":")).encode()
    return reg.put_manifest(repo, "v1", manifest, cr.OCI_MANIFEST_MT)


def wasm_blob(tag: bytes) -> bytes:
    # minimal valid wasm module header + a custom section carrying `tag`
    name = b"t"
    body = bytes([len(name)]) + name + tag
    return b"\x00asm\x01\x00\x00\x00" + b"\x00" + bytes([len(body)]) + body


# ---------------------------------------------------------------------------
# Offline format tests
# ---------------------------------------------------------------------------


class KeyFormatTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="cosign-ref-keys-")
        cls.prefix = os.path.join(cls.tmp, "k")
        r = run_tool("keygen", "--out-prefix", cls.prefix, "--password-env", "TEST_KEY_PW")
        assert r.returncode == 0, r.stderr

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def read(self, suffix):
        with open(self.prefix + suffix, "rb") as fh:
            return fh.read()

    def test_private_key_envelope_format(self):
        pem = self.read(".key")
        self.assertTrue(pem.startswith(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"))
        self.assertTrue(pem.endswith(b"-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"))
        for line in pem.splitlines()[1:-1]:
            self.assertLessEqual(len(line), 64)
        typ, body = cr.pem_decode(pem)
        env = json.loads(body)
        # exact structure, names and order as written by Go json.Marshal
        self.assertEqual(list(env), ["kdf", "cipher", "ciphertext"])
        self.assertEqual(list(env["kdf"]), ["name", "params", "salt"])
        self.assertEqual(env["kdf"]["name"], "scrypt")
        self.assertEqual(env["kdf"]["params"], {"N": 32768, "r": 8, "p": 1})
        self.assertEqual(list(env["kdf"]["params"]), ["N", "r", "p"])
        self.assertEqual(len(base64.b64decode(env["kdf"]["salt"], validate=True)), 32)
        self.assertEqual(list(env["cipher"]), ["name", "nonce"])
        self.assertEqual(env["cipher"]["name"], "nacl/secretbox")
        self.assertEqual(len(base64.b64decode(env["cipher"]["nonce"], validate=True)), 24)
        self.assertNotIn(b" ", body)  # compact JSON
        # ciphertext = 16-byte tag + PKCS#8 DER, no nonce prefix
        der = cr.decrypt_envelope(body, PASSWORD.encode())
        self.assertTrue(cr.is_pkcs8(der))
        self.assertEqual(len(base64.b64decode(env["ciphertext"])), len(der) + 16)

    def test_public_key_format(self):
        pub = self.read(".pub")
        self.assertTrue(pub.startswith(b"-----BEGIN PUBLIC KEY-----\n"))
        key = cr.load_public_key(pub)
        self.assertEqual(key.curve.name, "secp256r1")

    def test_load_key_cli_prints_matching_public_key(self):
        r = run_tool("load-key", "--key", self.prefix + ".key", "--password-env", "TEST_KEY_PW")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.encode(), self.read(".pub"))

    def test_wrong_password_fails(self):
        r = run_tool("load-key", "--key", self.prefix + ".key", "--password-env", "BAD",
                     env_extra={"BAD": "nope"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("decryption failed", r.stderr)
        with self.assertRaises(cr.KeyDecryptionError):
            cr.load_private_key(self.read(".key"), b"nope")

    def test_tampered_ciphertext_fails(self):
        _, body = cr.pem_decode(self.read(".key"))
        env = json.loads(body)
        ct = bytearray(base64.b64decode(env["ciphertext"]))
        ct[20] ^= 1
        env["ciphertext"] = base64.b64encode(bytes(ct)).decode()
        with self.assertRaises(cr.KeyDecryptionError):
            cr.decrypt_envelope(json.dumps(env).encode(), PASSWORD.encode())

    def test_legacy_cosign_pem_label_and_other_scrypt_levels(self):
        key = cr.load_private_key(self.read(".key"), PASSWORD.encode())
        for label, n in ((cr.PEM_TYPE_COSIGN, 32768), (cr.PEM_TYPE_SIGSTORE, 65536),
                         (cr.PEM_TYPE_COSIGN, 131072)):
            pem = cr.encode_private_key(key, b"", label, n)
            self.assertIn(label.encode(), pem)
            back = cr.load_private_key(pem, b"")  # empty password is legal
            self.assertEqual(cr.public_key_pem(back), self.read(".pub"))

    def test_rejects_nonstandard_scrypt_params(self):
        _, body = cr.pem_decode(self.read(".key"))
        env = json.loads(body)
        env["kdf"]["params"]["N"] = 1024
        with self.assertRaises(cr.KeyFormatError):
            cr.decrypt_envelope(json.dumps(env).encode(), PASSWORD.encode())

    def test_rejects_non_pkcs8_plaintext_and_other_pem_types(self):
        from cryptography.hazmat.primitives import serialization
        key = cr.load_private_key(self.read(".key"), PASSWORD.encode())
        sec1 = key.private_bytes(serialization.Encoding.DER,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
        pem = cr.pem_encode(cr.PEM_TYPE_SIGSTORE, cr.encrypt_envelope(sec1, b"x"))
        with self.assertRaisesRegex(cr.KeyFormatError, "PKCS#8"):
            cr.load_private_key(pem, b"x")
        with self.assertRaisesRegex(cr.KeyFormatError, "unsupported pem type"):
            cr.load_private_key(cr.pem_encode("PRIVATE KEY", sec1), b"x")


class PayloadTests(unittest.TestCase):
    def test_simple_signing_payload_bytes(self):
        d = "sha256:" + "ab" * 32
        got = cr.simple_signing_payload("127.0.0.1:5000/soma/capsule", d)
        want = ('{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/soma/capsule"},'
                '"image":{"docker-manifest-digest":"' + d + '"},'
                '"type":"cosign container image signature"},"optional":null}').encode()
        self.assertEqual(got, want)
        got = cr.simple_signing_payload("r/x", d, {"z": "1", "a": "<&>"})
        self.assertTrue(got.endswith(b'"optional":{"a":"\\u003c\\u0026\\u003e","z":"1"}}'))

    def test_signature_tag(self):
        d = "sha256:" + "0f" * 32
        self.assertEqual(cr.signature_tag(d), "sha256-" + "0f" * 32 + ".sig")
        with self.assertRaises(cr.CosignRefError):
            cr.signature_tag("sha256:XYZ")

    def test_sign_blob_verify_blob_cli(self):
        tmp = tempfile.mkdtemp(prefix="cosign-ref-blob-")
        try:
            prefix = os.path.join(tmp, "k")
            self.assertEqual(run_tool("keygen", "--out-prefix", prefix, "--password-env",
                                      "TEST_KEY_PW").returncode, 0)
            d = "sha256:" + "12" * 32
            payload = os.path.join(tmp, "payload.json")
            r = run_tool("payload", "--docker-reference", "example/x", "--digest", d)
            with open(payload, "w") as fh:
                fh.write(r.stdout)
            sig = os.path.join(tmp, "payload.sig")
            r = run_tool("sign-blob", "--key", prefix + ".key", "--password-env", "TEST_KEY_PW",
                         "--output-signature", sig, payload)
            self.assertEqual(r.returncode, 0, r.stderr)
            raw = base64.b64decode(slurp(sig), validate=True)
            self.assertEqual(raw[0], 0x30)  # ASN.1 DER SEQUENCE
            r = run_tool("verify-blob", "--pub", prefix + ".pub", "--signature", sig,
                         "--digest", d, payload)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = run_tool("verify-blob", "--pub", prefix + ".pub", "--signature", sig,
                         "--digest", "sha256:" + "13" * 32, payload)
            self.assertEqual(r.returncode, 1)
            self.assertIn("DigestMismatchError", r.stderr)
            with open(payload, "a") as fh:
                fh.write(" ")
            r = run_tool("verify-blob", "--pub", prefix + ".pub", "--signature", sig, payload)
            self.assertEqual(r.returncode, 1)
            self.assertIn("BadSignatureError", r.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# Registry end-to-end tests
# ---------------------------------------------------------------------------


@unittest.skipIf(REGISTRY_BIN is None and not REQUIRE_REGISTRY, "docker-registry not installed")
class RegistryTests(unittest.TestCase):
    REPO = "soma/capsule"

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="cosign-ref-e2e-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.registry = LocalRegistry(cls.tmp)
        cls.addClassCleanup(cls.registry.stop)
        cls.registry.start()
        cls.reg = cr.Registry(cls.registry.url)
        cls.keys = {}
        for name in ("signer", "other"):
            prefix = os.path.join(cls.tmp, name)
            r = run_tool("keygen", "--out-prefix", prefix, "--password-env", "TEST_KEY_PW")
            assert r.returncode == 0, r.stderr
            cls.keys[name] = prefix

    def new_artifact(self, label: str) -> str:
        return push_test_artifact(self.reg, self.REPO, wasm_blob(label.encode()))

    def cli(self, cmd, digest, key="signer", repo=None, extra=()):
        args = [cmd, "--registry", self.registry.url, "--repo", repo or self.REPO, "--digest", digest]
        if cmd == "sign":
            args += ["--key", self.keys[key] + ".key", "--password-env", "TEST_KEY_PW"]
        else:
            args += ["--pub", self.keys[key] + ".pub"]
        return run_tool(*args, *extra)

    def test_sign_then_verify_and_manifest_layout(self):
        digest = self.new_artifact("happy")
        r = self.cli("sign", digest)
        self.assertEqual(r.returncode, 0, r.stderr + self.registry.log())
        res = json.loads(r.stdout)
        self.assertEqual(res["tag"], "sha256-" + digest.split(":")[1] + ".sig")

        r = self.cli("verify", digest)
        self.assertEqual(r.returncode, 0, r.stderr)
        verified = json.loads(r.stdout.splitlines()[0])
        self.assertEqual(verified["critical"]["image"]["docker-manifest-digest"], digest)

        # Inspect what was stored, exactly as a third party would see it.
        raw, mt, _ = self.reg.get_manifest(self.REPO, res["tag"])
        m = json.loads(raw)
        self.assertEqual(mt, "application/vnd.oci.image.manifest.v1+json")
        self.assertEqual(m["schemaVersion"], 2)
        self.assertEqual(m["mediaType"], "application/vnd.oci.image.manifest.v1+json")
        self.assertEqual(m["config"]["mediaType"], "application/vnd.oci.image.config.v1+json")
        self.assertEqual(len(m["layers"]), 1)
        layer = m["layers"][0]
        self.assertEqual(layer["mediaType"], "application/vnd.dev.cosign.simplesigning.v1+json")
        payload = self.reg.get_blob(self.REPO, layer["digest"])
        self.assertEqual(layer["size"], len(payload))
        self.assertEqual(json.loads(payload), {
            "critical": {
                "identity": {"docker-reference": f"127.0.0.1:{self.registry.port}/{self.REPO}"},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        })
        sig = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"], validate=True)
        cr.verify_bytes(cr.load_public_key(slurp(self.keys["signer"] + ".pub")), payload, sig)
        config = json.loads(self.reg.get_blob(self.REPO, m["config"]["digest"]))
        self.assertEqual(config["rootfs"], {"type": "layers", "diff_ids": [layer["digest"]]})
        self.assertEqual(config["architecture"], "")
        self.assertEqual(config["os"], "")

    def test_wrong_public_key_fails(self):
        digest = self.new_artifact("wrongkey")
        self.assertEqual(self.cli("sign", digest).returncode, 0)
        r = self.cli("verify", digest, key="other")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("BadSignatureError", r.stderr)
        self.assertIn("invalid signature", r.stderr)

    def test_missing_signature_fails(self):
        digest = self.new_artifact("unsigned")
        r = self.cli("verify", digest)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("NoSignaturesError", r.stderr)
        self.assertIn("no signatures found", r.stderr)

    def test_layer_without_signature_annotation_fails(self):
        digest = self.new_artifact("no-annotation")
        payload = cr.simple_signing_payload(f"{self.reg.host}/{self.REPO}", digest)
        pd = self.reg.push_blob(self.REPO, payload)
        cfg = cr.signature_config([pd])
        cd = self.reg.push_blob(self.REPO, cfg)
        manifest = cr.signature_manifest(
            {"mediaType": cr.OCI_CONFIG_MT, "size": len(cfg), "digest": cd},
            [{"mediaType": cr.SIMPLESIGNING_MT, "size": len(payload), "digest": pd}])
        self.reg.put_manifest(self.REPO, cr.signature_tag(digest), manifest, cr.OCI_MANIFEST_MT)
        r = self.cli("verify", digest)
        self.assertEqual(r.returncode, 1)
        self.assertIn("NoSignaturesError", r.stderr)

    def test_tampered_payload_digest_fails(self):
        """Original signature kept, payload's docker-manifest-digest edited."""
        digest = self.new_artifact("tamper-target")
        other = self.new_artifact("tamper-other")
        self.assertEqual(self.cli("sign", digest).returncode, 0)
        tag = cr.signature_tag(digest)
        m = json.loads(self.reg.get_manifest(self.REPO, tag)[0])
        layer = m["layers"][0]
        payload = self.reg.get_blob(self.REPO, layer["digest"])
        tampered = payload.replace(digest.encode(), other.encode())
        self.assertNotEqual(tampered, payload)
        layer["digest"] = self.reg.push_blob(self.REPO, tampered)
        layer["size"] = len(tampered)
        cfg = cr.signature_config([layer["digest"]])
        m["config"] = {"mediaType": cr.OCI_CONFIG_MT, "size": len(cfg),
                       "digest": self.reg.push_blob(self.REPO, cfg)}
        # (a) tampered payload left under the original digest's tag
        self.reg.put_manifest(self.REPO, tag, json.dumps(m).encode(), cr.OCI_MANIFEST_MT)
        r = self.cli("verify", digest)
        self.assertEqual(r.returncode, 1)
        self.assertIn("BadSignatureError", r.stderr)
        # (b) same tampered layer moved to the digest it now names
        self.reg.put_manifest(self.REPO, cr.signature_tag(other), json.dumps(m).encode(),
                              cr.OCI_MANIFEST_MT)
        r = self.cli("verify", other)
        self.assertEqual(r.returncode, 1)
        self.assertIn("BadSignatureError", r.stderr)

    def test_validly_signed_payload_for_other_digest_fails(self):
        """Genuine signature, but over a payload naming a different digest."""
        digest = self.new_artifact("mismatch-target")
        other = self.new_artifact("mismatch-other")
        key = cr.load_private_key(slurp(self.keys["signer"] + ".key"), PASSWORD.encode())
        foreign = cr.simple_signing_payload(f"{self.reg.host}/{self.REPO}", other)
        cr.sign_image(self.reg, self.REPO, digest, key, payload=foreign)
        r = self.cli("verify", digest)
        self.assertEqual(r.returncode, 1)
        self.assertIn("DigestMismatchError", r.stderr)
        with self.assertRaises(cr.DigestMismatchError):
            cr.verify_image(self.reg, self.REPO, digest, key.public_key())

    def test_second_signature_is_appended(self):
        digest = self.new_artifact("two-signers")
        self.assertEqual(self.cli("sign", digest, key="signer").returncode, 0)
        r = self.cli("sign", digest, key="other")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["layers"], 2)
        m = json.loads(self.reg.get_manifest(self.REPO, cr.signature_tag(digest))[0])
        cfg = json.loads(self.reg.get_blob(self.REPO, m["config"]["digest"]))
        self.assertEqual(cfg["rootfs"]["diff_ids"], [l["digest"] for l in m["layers"]])
        for who in ("signer", "other"):
            self.assertEqual(self.cli("verify", digest, key=who).returncode, 0)

    def test_library_api_roundtrip(self):
        digest = self.new_artifact("library")
        key = cr.load_private_key(slurp(self.keys["signer"] + ".key"), PASSWORD.encode())
        res = cr.sign_image(self.reg, self.REPO, digest, key, optional={"by": "soma-test"}, replace=True)
        self.assertEqual(res["layers"], 1)
        payloads = cr.verify_image(self.reg, self.REPO, digest, key.public_key())
        self.assertEqual(payloads[0]["optional"], {"by": "soma-test"})


@unittest.skipIf(REGISTRY_BIN is None and not REQUIRE_REGISTRY, "docker-registry not installed")
class BasicAuthRegistryTests(unittest.TestCase):
    USER, PASS = "soma", "s3cret-pass"

    @classmethod
    def setUpClass(cls):
        try:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt  # stdlib until 3.12; bcrypt via libxcrypt
            hashed = crypt.crypt(cls.PASS, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        except Exception:  # pragma: no cover
            hashed = None
        if not hashed or not hashed.startswith("$2"):
            raise unittest.SkipTest("no bcrypt available to write an htpasswd file")
        cls.tmp = tempfile.mkdtemp(prefix="cosign-ref-auth-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.registry = LocalRegistry(cls.tmp, htpasswd_line=f"{cls.USER}:{hashed}")
        cls.addClassCleanup(cls.registry.stop)
        cls.registry.start()
        cls.prefix = os.path.join(cls.tmp, "k")
        r = run_tool("keygen", "--out-prefix", cls.prefix, "--password-env", "TEST_KEY_PW")
        assert r.returncode == 0, r.stderr

    def test_basic_auth_sign_verify(self):
        anon = cr.Registry(self.registry.url)
        with self.assertRaises(cr.RegistryError) as ctx:
            push_test_artifact(anon, "auth/capsule", wasm_blob(b"anon"))
        self.assertEqual(ctx.exception.status, 401)
        authed = cr.Registry(self.registry.url, self.USER, self.PASS)
        digest = push_test_artifact(authed, "auth/capsule", wasm_blob(b"authed"))
        common = ["--registry", self.registry.url, "--repo", "auth/capsule", "--digest", digest,
                  "--username", self.USER, "--registry-password-env", "TEST_REG_PW"]
        env = {"TEST_REG_PW": self.PASS}
        r = run_tool("sign", "--key", self.prefix + ".key", "--password-env", "TEST_KEY_PW",
                     *common, env_extra=env)
        self.assertEqual(r.returncode, 0, r.stderr + self.registry.log())
        r = run_tool("verify", "--pub", self.prefix + ".pub", *common, env_extra=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run_tool("verify", "--pub", self.prefix + ".pub", *common,
                     env_extra={"TEST_REG_PW": "wrong"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("401", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
