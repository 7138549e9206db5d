"""edgeopt bundle OUT_DIR [-o FILE.tar.gz] [--sign KEY] [--verify FILE [--allowed-signers FILE]]"""
from __future__ import annotations

from typing import List, Optional

import typer

from edgeopt.cli import echo_json
from edgeopt.cli.options import DEBUG, JSON, argument, command, option, variant

# Options of this command alone; options it shares with others live in edgeopt.cli.options.
OUT_DIR = argument("out_dir", Optional[str], None, help="Output directory of `edgeopt convert` (with manifest.json).")
OUTPUT = option("output", Optional[str], None, "--output", "-o",
                help="Archive to write (default: OUT_DIR.tar.gz beside OUT_DIR).")
VERIFY = option("verify", Optional[str], None, "--verify",
                help="Check an installed/unpacked bundle directory or a bundle archive against its SHA256SUMS and "
                     "what `edgeopt bundle` writes (runtime, manifest, no links or extra code; with OUT_DIR: also "
                     "against OUT_DIR's artifacts). Exit 1 if a file differs.")
ARTIFACTS = option("artifact", List[str], [], "--artifact", help="Bundle only this artifact (repeatable; default all).")
SIGN = option("sign", Optional[str], None, "--sign",
              help="Sign the archive with this SSH private key (ssh-keygen -Y sign, namespace edgeopt-bundle): "
                   "writes FILE.tar.gz.sig, and FILE.tar.gz.SHA256SUMS.sig to install as DIR/SHA256SUMS.sig.")
ALLOWED_SIGNERS = option("allowed_signers", Optional[str], None, "--allowed-signers",
                         help="With --verify: also require a signature by a key of this ssh-keygen allowed-signers "
                              "file (FILE.sig beside an archive; DIR/SHA256SUMS.sig in a directory). Exit 1 if "
                              "it is missing or does not match.")


@command("bundle", OUT_DIR, OUTPUT, VERIFY, ARTIFACTS, SIGN, ALLOWED_SIGNERS,
         variant(JSON, help="Print the result as JSON on stdout, nothing else."), DEBUG)
def bundle(o):
    """Pack artifacts, manifest and the light runtime into a reproducible .tar.gz for firmware images."""
    from edgeopt.errors import GateError, UsageError
    from edgeopt.firmware.bundle import SUMS, build, verify

    out_dir, output, artifact = o.out_dir, o.output, o.artifact
    if o.verify is not None:
        if output or artifact or o.sign:
            raise UsageError("--verify checks an existing bundle; it cannot be combined with -o, --artifact or --sign")
        res = verify(o.verify, against=out_dir, allowed_signers=o.allowed_signers)
        if o.json_out:
            echo_json(res)
        if not res["ok"] and o.allowed_signers is not None and res.get("signer") is None:
            raise GateError(f"bundle {o.verify}: {res['problems'][0]}",
                            hint="check --allowed-signers, or sign the bundle again with `edgeopt bundle --sign`")
        if not res["ok"]:
            raise GateError(f"bundle {o.verify}: {len(res['problems'])} problem(s) against its {SUMS}:\n"
                            + "\n".join(res["problems"]),
                            hint="rebuild it with `edgeopt bundle OUT_DIR` and install it again")
        if not o.json_out:
            what = f" and {out_dir}" if out_dir else ""
            signed = f"; signed by {res['signer']}" if res.get("signer") else ""
            typer.echo(f"ok: {o.verify}: {res['files']} files match {SUMS}{what}{signed}")
        return
    if o.allowed_signers is not None:
        raise UsageError("--allowed-signers goes with --verify (it checks who signed an existing bundle)")
    if out_dir is None:
        raise UsageError("missing OUT_DIR (the output directory of `edgeopt convert`)",
                         hint="edgeopt bundle OUT_DIR [-o FILE.tar.gz]  |  edgeopt bundle --verify FILE")
    res = build(out_dir, output, artifacts=artifact or None, sign_key=o.sign)
    if o.json_out:
        echo_json(res)
        return
    typer.echo(f"{res['file']}: {len(res['entries'])} files, {res['bytes'] / 1024:.1f} KiB, "
               f"sha256 {res['sha256']}")
    typer.echo(f"  artifacts: {', '.join(res['artifacts'])} (target {res['target']}); mtime {res['mtime']}")
    if res.get("signatures"):
        typer.echo(f"  signed: {', '.join(res['signatures'])}")
