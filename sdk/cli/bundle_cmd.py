"""edgeopt bundle OUT_DIR [-o FILE.tar.gz] [--verify FILE]"""
from __future__ import annotations

import json
from typing import List, Optional

import typer

from edgeopt.cli import app


@app.command("bundle")
def bundle(
    out_dir: Optional[str] = typer.Argument(None, help="Output directory of `edgeopt convert` (with manifest.json)."),
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="Archive to write (default: OUT_DIR.tar.gz beside OUT_DIR)."),
    verify: Optional[str] = typer.Option(None, "--verify", help="Check an installed/unpacked bundle directory or "
                                         "a bundle archive against its SHA256SUMS (with OUT_DIR: also against "
                                         "OUT_DIR's artifacts). Exit 1 if a file differs."),
    artifact: List[str] = typer.Option([], "--artifact", help="Bundle only this artifact (repeatable; default all)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout, nothing else."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Pack artifacts, manifest and the light runtime into a reproducible .tar.gz for firmware images."""
    from edgeopt.firmware import bundle as B
    from edgeopt.errors import GateError, UsageError

    if verify is not None:
        if output or artifact:
            raise UsageError("--verify checks an existing bundle; it cannot be combined with -o or --artifact")
        res = B.verify(verify, against=out_dir)
        if json_out:
            typer.echo(json.dumps(res, indent=2))
        if not res["ok"]:
            raise GateError(f"bundle {verify}: {len(res['problems'])} problem(s) against its {B.SUMS}:\n"
                            + "\n".join(res["problems"]),
                            hint="rebuild it with `edgeopt bundle OUT_DIR` and install it again")
        if not json_out:
            what = f" and {out_dir}" if out_dir else ""
            typer.echo(f"ok: {verify}: {res['files']} files match {B.SUMS}{what}")
        return
    if out_dir is None:
        raise UsageError("missing OUT_DIR (the output directory of `edgeopt convert`)",
                         hint="edgeopt bundle OUT_DIR [-o FILE.tar.gz]  |  edgeopt bundle --verify FILE")
    res = B.build(out_dir, output, artifacts=artifact or None)
    if json_out:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(f"{res['file']}: {len(res['entries'])} files, {res['bytes'] / 1024:.1f} KiB, "
               f"sha256 {res['sha256']}")
    typer.echo(f"  artifacts: {', '.join(res['artifacts'])} (target {res['target']}); mtime {res['mtime']}")
