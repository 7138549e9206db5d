"""SSH signatures for bundles: ``ssh-keygen -Y sign`` / ``-Y verify`` (OpenSSH 8.1+), no shell, with timeouts.

What is signed (see :mod:`edgeopt.firmware.bundle`):

- ``X.tar.gz.sig``: the archive's bytes, namespace ``edgeopt-bundle``
  (``ssh-keygen -Y verify -f ALLOWED -I ID -n edgeopt-bundle -s X.tar.gz.sig < X.tar.gz`` checks it by hand);
- ``X.tar.gz.SHA256SUMS.sig``: the bytes of the archive's ``SHA256SUMS`` member, namespace
  ``edgeopt-bundle-sums``. Installed as ``DIR/SHA256SUMS.sig`` next to the unpacked files, it lets
  ``edgeopt bundle --verify DIR --allowed-signers FILE`` check who made an unpacked bundle: the signature
  covers SHA256SUMS, and verify checks that SHA256SUMS lists exactly the files there, with their hashes.

The signer is found with ``ssh-keygen -Y find-principals`` (the principals of the allowed-signers file whose
key made the signature) and then proven with ``-Y verify`` for that principal.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from edgeopt.errors import UsageError

NAMESPACE = "edgeopt-bundle"            # the archive's signature
SUMS_NAMESPACE = "edgeopt-bundle-sums"  # the signature of SHA256SUMS alone: not interchangeable with the above
SIGN_TIMEOUT_S = 300      # long enough to type a key's passphrase at ssh-keygen's prompt
VERIFY_TIMEOUT_S = 60


class SignatureError(Exception):
    """The signature is missing, malformed, made by a key not in the allowed signers, or does not match."""


def ssh_keygen() -> str:
    """Path of ssh-keygen, or UsageError (exit 2) naming what to install."""
    exe = shutil.which("ssh-keygen")
    if not exe:
        raise UsageError("ssh-keygen not found on PATH; signing and checking bundle signatures need it",
                         hint="install OpenSSH's client tools (Debian: apt-get install openssh-client)")
    return exe


def _run(args: list[str], stdin, timeout: float, what: str) -> subprocess.CompletedProcess:
    """ssh-keygen ARGS with stdin (bytes or an open file); no shell. A timeout or a failure to start is an error."""
    kwargs = {"input": stdin} if isinstance(stdin, (bytes, bytearray)) else {"stdin": stdin}
    try:
        return subprocess.run([ssh_keygen(), *args], capture_output=True, timeout=timeout, shell=False, **kwargs)
    except subprocess.TimeoutExpired:
        raise UsageError(f"ssh-keygen {what}: no answer within {timeout:.0f} s") from None
    except OSError as e:
        raise UsageError(f"ssh-keygen {what}: cannot run it ({e.strerror or e})") from None


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines()
             if ln.strip() and not ln.startswith("Signing data on standard input")]
    return lines[-1][:300] if lines else "no message"


def sign(key: str, data: bytes, namespace: str = NAMESPACE) -> bytes:
    """The armored SSH signature of ``data`` with private key ``key`` (or its .pub, via ssh-agent).

    Raises UsageError (exit 2) when the key is missing or unusable."""
    key = os.fspath(key)
    if not os.path.isfile(key):
        raise UsageError(f"--sign {key}: no such key file", hint="an SSH private key, e.g. ~/.ssh/id_ed25519")
    r = _run(["-Y", "sign", "-f", key, "-n", namespace], data, SIGN_TIMEOUT_S, "-Y sign")
    if r.returncode != 0 or not r.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        raise UsageError(f"--sign {key}: ssh-keygen could not sign with it ({_last_line(r.stderr)})")
    return r.stdout


def verify(allowed_signers: str, sig_path: str, data, namespace: str = NAMESPACE) -> str:
    """The principal of ``allowed_signers`` whose key signed ``data`` (bytes or an open binary file).

    Raises SignatureError when the signature is missing, malformed, by another key, or does not match the
    data; UsageError (exit 2) when the allowed-signers file is missing or ssh-keygen is."""
    allowed_signers = os.fspath(allowed_signers)
    if not os.path.isfile(allowed_signers):
        raise UsageError(f"--allowed-signers {allowed_signers}: no such file",
                         hint="lines of '<principal> <key type> <public key>' (ssh-keygen(1), ALLOWED SIGNERS)")
    ssh_keygen()
    if not os.path.isfile(sig_path):
        raise SignatureError(f"no signature {sig_path}")
    r = _run(["-Y", "find-principals", "-s", sig_path, "-f", allowed_signers], b"", VERIFY_TIMEOUT_S,
             "-Y find-principals")
    principals = [p.strip() for p in r.stdout.decode("utf-8", "replace").splitlines() if p.strip()]
    if r.returncode != 0 or not principals:
        reason = _last_line(r.stderr)
        if "No principal matched" in reason or not reason or reason == "no message":
            raise SignatureError(f"{sig_path}: signed by a key not in {allowed_signers}")
        raise SignatureError(f"{sig_path}: not a usable SSH signature ({reason})")
    start = data.tell() if hasattr(data, "tell") else None
    reason = ""
    for principal in principals:
        if start is not None:
            data.seek(start)
        r = _run(["-Y", "verify", "-f", allowed_signers, "-I", principal, "-n", namespace, "-s", sig_path],
                 data, VERIFY_TIMEOUT_S, "-Y verify")
        if r.returncode == 0:
            return principal
        reason = _last_line(r.stderr)
    raise SignatureError(f"{sig_path}: does not match the signed data ({reason})")
