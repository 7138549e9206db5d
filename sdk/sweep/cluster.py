"""``edgeopt sweep --ray ADDRESS``: the sweep's work on a Ray cluster.

- A conversion is a Ray task (``num_cpus`` each) on any node. Its inputs (the model and data files) travel to it
  through Ray's object store, and its output comes back the same way: the driver installs it in deploy's cache
  (staged, then renamed), so a conversion made on another node is never made again here, and a task that dies
  gives nothing (Ray retries it) — never a partial output.
- A device is driven by one named, detached Ray actor, named after the board's address: every sweep on the
  cluster that benchmarks on that board calls the same actor, whose calls run one at a time, so at most one
  benchmark runs on a board at a time; the boards are separate actors, used in parallel.

``ray`` is imported here only inside functions: ``import edgeopt`` and ``edgeopt --help`` never load it.
"""
from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

from edgeopt.errors import GateError, UsageError

__all__ = ["RayBackend", "convert_task", "DeviceActor", "actor_name"]

NAMESPACE = "edgeopt"
MAX_INPUT_BYTES = 4 << 30   # what one model's files may put in the object store


def _pack(path: str) -> dict:
    """A file or directory as {relative path: bytes} ('' for a file)."""
    p = Path(path)
    if p.is_file():
        return {"": p.read_bytes()}
    files, total = {}, 0
    for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.is_symlink()):
        data = f.read_bytes()
        total += len(data)
        if total > MAX_INPUT_BYTES:
            raise UsageError(f"{path}: over {MAX_INPUT_BYTES >> 30} GiB: too large to send to the cluster")
        files[str(f.relative_to(p))] = data
    return files


def _unpack(name: str, files: dict, into: Path) -> str:
    """Write a packed file or directory under ``into`` with its own base name (the manifest records it)."""
    dest = into / name
    if list(files) == [""]:
        dest.write_bytes(files[""])
        return str(dest)
    for rel, data in files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise UsageError(f"bad file name in the packed input: {rel!r}")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    return str(dest)


def convert_task(inputs: dict, target: str, options: dict) -> dict:
    """A Ray task: convert in a private temporary directory and return its files.

    ``inputs``: {"model" | "calib" | "val": (base name, packed files)}. Returns ``{"files", "node", "seconds"}``,
    or ``{"error", "kind"}`` for the cell's own failure (bad input, an accuracy gate): returned, not raised, so
    that Ray does not retry what would fail again.
    """
    import ray

    import edgeopt
    from edgeopt.devices.deploy import entry_files

    t0 = time.time()
    node = {"id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}
    with tempfile.TemporaryDirectory(prefix="edgeopt-sweep-") as tmp:
        paths = {}
        for key, (name, files) in inputs.items():
            if isinstance(files, ray.ObjectRef):  # nested in a dict: Ray passes the reference, not the value
                files = ray.get(files)
            (Path(tmp) / key).mkdir()
            paths[key] = _unpack(name, files, Path(tmp) / key)
        kw = dict(options)
        kw.update({k: v for k, v in paths.items() if k != "model"})
        try:
            edgeopt.convert(paths["model"], target=target, out=os.path.join(tmp, "out"), **kw)
        except GateError as e:
            return {"error": str(e), "kind": "gate", "node": node}
        except UsageError as e:
            return {"error": str(e), "kind": "usage", "node": node}
        files = entry_files(os.path.join(tmp, "out"))
    return {"files": files, "node": node, "seconds": round(time.time() - t0, 3)}


class DeviceActor:
    """Holds one board: its calls run one at a time (Ray's default for an actor), whichever sweep makes them."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="edgeopt-device-actor-"))

    def bench(self, device, artifact: dict, opts, accept_new: bool) -> dict:
        """Write the artifact (``{"file", "sha256", "data"}``) on this node, checked, and benchmark it on the
        device; returns the bench result (or its error entry) with the node that ran it."""
        import ray

        from edgeopt.devices.bench import bench_device
        from edgeopt.devices.push import sha256_file
        from edgeopt.errors import EdgeoptError
        from edgeopt.runtime import check_artifact_name

        d = self.dir / artifact["sha256"]
        path = d / check_artifact_name(artifact["file"])
        if not (path.is_file() and sha256_file(str(path)) == artifact["sha256"]):
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{path.name}.{os.getpid()}.tmp"
            tmp.write_bytes(artifact["data"])
            if sha256_file(str(tmp)) != artifact["sha256"]:
                tmp.unlink()
                return {"device": device.name, "error": "the artifact arrived damaged (sha256 mismatch)"}
            os.replace(tmp, path)
        try:
            res = bench_device(device, str(path), opts, accept_new=accept_new)
        except EdgeoptError as e:
            res = {"device": device.name, "error": str(e), "hint": getattr(e, "hint", None),
                   "exit_code": getattr(e, "exit_code", 3)}
        res["node"] = {"id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
        return res


def actor_name(device) -> str:
    """The actor of a board: named after where it is (user, address, port), not what an inventory calls it."""
    where = f"{device.user or ''}@{device.address}:{device.port}:{'local' if device.local else 'ssh'}"
    return "edgeopt-device-" + hashlib.sha256(where.encode()).hexdigest()[:20]


class RayBackend:
    """The sweep's backend on a Ray cluster (``ray.init(address=...)``)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, cache_root: str | None = None):
        try:
            import ray
        except ImportError:
            raise UsageError("--ray needs Ray", hint="pip install 'edgeopt[cluster]'") from None
        self.ray = ray
        self.cache_root = cache_root
        try:
            # "local" (--ray alone) is ray.init's own word for a new Ray instance on this machine, for this sweep
            # (no address would join the last cluster started here, even one long stopped)
            ray.init(address=address, namespace=NAMESPACE, ignore_reinit_error=True, log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UsageError(f"--ray {address}: {str(e).splitlines()[0][:300]}",
                             hint="start a cluster with `ray start --head`, or pass its address") from None
        # a worker that dies (killed, out of memory) is a system failure: Ray runs the task again
        self.task = ray.remote(num_cpus=num_cpus, max_retries=3)(convert_task)
        self.actor_class = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)(DeviceActor)
        self._inputs: dict = {}
        self._actors: dict = {}
        self._artifacts: dict = {}

    def _packed(self, path: str):
        """The object-store reference of a model or data file (put once per sweep)."""
        if path not in self._inputs:
            self._inputs[path] = (os.path.basename(path.rstrip("/")), self.ray.put(_pack(path)))
        return self._inputs[path]

    def convert(self, cell, entry) -> Future:
        """A cached entry is used as it is; otherwise a Ray task converts it."""
        from edgeopt.devices.deploy import cached_manifest

        manifest = cached_manifest(entry)
        if manifest is not None:
            fut = Future()
            fut.set_result({"cached": manifest})
            return fut
        options = dict(entry.options)
        inputs = {"model": cell.model.path}
        for key in ("calib", "val"):
            value = options.pop(key, None)
            if value is not None and value != "random":
                inputs[key] = value
            elif value is not None:
                options[key] = value
        refs = {}
        for key, path in inputs.items():
            name, ref = self._packed(path)
            refs[key] = (name, ref)
        # the packed inputs are arguments of the task: Ray fetches them to the node it runs on
        return self.task.remote({k: (n, r) for k, (n, r) in refs.items()}, entry.target, options).future()

    def finish_convert(self, cell, entry, raw: dict) -> dict:
        """Install a task's output in the cache (in the driver: one writer) and return the conversion."""
        from edgeopt.devices.deploy import install_entry
        from edgeopt.sweep.run import node_info

        if "cached" in raw:
            m = raw["cached"]
            return {"manifest": {k: v for k, v in m.items() if not k.startswith("_")}, "out": entry.out,
                    "converted": False, "node": node_info(), "seconds": 0.0}
        if "error" in raw:
            raise (GateError if raw["kind"] == "gate" else UsageError)(raw["error"])
        manifest = install_entry(entry, raw["files"], self.cache_root)
        return {"manifest": {k: v for k, v in manifest.items() if not k.startswith("_")}, "out": entry.out,
                "converted": True, "node": raw["node"], "seconds": raw["seconds"]}

    def retryable(self, error: BaseException) -> bool:
        """Ray has already retried a task whose worker died; what is left is reported."""
        return False

    def _actor(self, device):
        name = actor_name(device)
        if name not in self._actors:
            self._actors[name] = self.actor_class.options(name=name, namespace=NAMESPACE, lifetime="detached",
                                                          get_if_exists=True).remote()
        return self._actors[name]

    def bench(self, device, conv: dict, opts, accept_new: bool) -> Future:
        """The board's actor benchmarks the artifact, sent through the object store (once per artifact)."""
        from edgeopt.runtime import check_artifact_name

        art = conv["manifest"]["artifacts"][0]
        if art["sha256"] not in self._artifacts:
            path = os.path.join(conv["out"], check_artifact_name(art["file"]))
            with open(path, "rb") as f:
                data = f.read()
            self._artifacts[art["sha256"]] = self.ray.put({"file": art["file"], "sha256": art["sha256"],
                                                           "data": data})
        return self._actor(device).bench.remote(device, self._artifacts[art["sha256"]], opts, accept_new).future()

    def close(self):
        """Disconnect from the cluster (the device actors stay: other sweeps share them)."""
        self.ray.shutdown()
