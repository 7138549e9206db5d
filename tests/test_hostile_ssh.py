"""Hostile devices and files on the SSH side, against real sshd devices (sshlab): a known_hosts file with a bad
line or a key of another type, recording a host key, an SFTP server that never answers, a flood of output,
an interrupted benchmark, a planted lock-file symlink, a tampered artifact, conditions taken outside the lock.
Each test reproduces the attack or failure (it fails on the code before the fix)."""
import base64
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeopt.devices import bench as bench_module
from edgeopt.devices import conditions as conditions_module
from edgeopt.devices import connection as connection_module
from edgeopt.devices import inventory as I
from edgeopt.devices.bench import BenchOptions, bench_device, runner_source
from edgeopt.devices.connection import connect
from edgeopt.devices.push import push
from edgeopt.errors import DeviceError
from edgeopt_testkit.cli import EDGEOPT, edgeopt_cli
from edgeopt_testkit.models import small_cnn_onnx
from sshlab import keygen

pytestmark = pytest.mark.ssh


def dev_of(lab, name, **extra):
    return I.load(lab.inventory(**extra)).get(name)


def accepted_logins(d):
    return d.log.read_text().count("Accepted publickey")


def imposter(lab, tmp_path, d):
    """Stop ``d`` and start another sshd, with another host key, on a new port; known_hosts keeps d's entry
    (moved to the new port): the same device name and address, another key."""
    lab.stop_device(d)
    other = tmp_path / "other_host_key"
    keygen(other)
    d2 = lab.start(d.name + "-imposter", host_key=other, known=False)
    return d2


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------------------------ 2: known_hosts parsing

def test_malformed_known_hosts_line_does_not_hide_a_changed_key(lab, tmp_path, capfd):
    d = lab.start("pi-01")
    dev = dev_of(lab, "pi-01")
    d2 = imposter(lab, tmp_path, d)
    dev.port = d2.port
    # a bad line (not base64) before the device's real entry: paramiko's loader stopped there
    lab.known_hosts.write_text("garbage.example ssh-ed25519 AAAA!!!not-base64!!!\n"
                               + d.known_line.replace(f":{d.port} ", f":{d2.port} ") + "\n")
    before = lab.known_hosts.read_text()
    with pytest.raises(DeviceError) as e:
        connect(dev, accept_new=True)
    assert "HOST KEY CHANGED" in str(e.value) and str(e.value).startswith("pi-01:") and e.value.exit_code == 3
    assert lab.known_hosts.read_text() == before       # the imposter's key was not recorded
    assert accepted_logins(d2) == 0
    err = capfd.readouterr().err
    assert f"warning: {lab.known_hosts}:1: malformed known_hosts line skipped" in err


def test_key_of_another_type_is_changed_not_new(lab, tmp_path):
    d = lab.start("pi-01", known=False)
    dev = dev_of(lab, "pi-01")
    ecdsa = tmp_path / "ecdsa_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(ecdsa)], check=True)
    kind, b64 = Path(str(ecdsa) + ".pub").read_text().split()[:2]
    lab.known_hosts.write_text(f"[127.0.0.1]:{d.port} {kind} {b64}\n")   # the device offers only ed25519
    for accept_new in (False, True):
        with pytest.raises(DeviceError) as e:
            connect(dev, accept_new=accept_new)
        assert "HOST KEY CHANGED" in str(e.value) and "ecdsa-sha2-nistp256" in str(e.value)
    assert lab.known_hosts.read_text().count("\n") == 1 and accepted_logins(d) == 0


def test_hashed_revoked_and_cert_authority_lines(lab):
    d = lab.start("pi-01", known=False)
    dev = dev_of(lab, "pi-01")
    kind, b64 = d.host_pub.split()[:2]
    # hashed by ssh-keygen -H: still known
    lab.known_hosts.write_text(d.known_line + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(lab.known_hosts)], check=True, capture_output=True)
    assert lab.known_hosts.read_text().startswith("|1|")
    with connect(dev) as c:
        assert c.run("true").rc == 0
    # @revoked wins over a plain entry
    lab.known_hosts.write_text(f"@revoked * {kind} {b64}\n{d.known_line}\n")
    for accept_new in (False, True):
        with pytest.raises(DeviceError, match="REVOKED"):
            connect(dev, accept_new=accept_new)
    # a @cert-authority line is no trust in this plain key
    lab.known_hosts.write_text(f"@cert-authority [127.0.0.1]:{d.port} {kind} {b64}\n")
    with pytest.raises(DeviceError, match="host key unknown"):
        connect(dev)
    assert accepted_logins(d) == 1


def test_known_hosts_patterns():
    from edgeopt.devices.connection import KnownHosts
    blob = base64.b64encode(b"\0\0\0\x0bssh-ed25519" + b"\0\0\0\x20" + b"k" * 32).decode()
    kh = KnownHosts.parse("kh", f"*.lab,!bad.lab ssh-ed25519 {blob}\n[10.0.0.?]:2222 ssh-ed25519 {blob}\n"
                                f"short line\nx ssh-rsa {blob}\n")
    assert kh.bad == [3, 4]        # too few fields; the key's own type is not the one named
    assert kh.keys_for("pi.lab") and not kh.keys_for("bad.lab") and not kh.keys_for("pi.other")
    assert kh.keys_for("[10.0.0.5]:2222") and not kh.keys_for("[10.0.0.5]:22") and not kh.keys_for("10.0.0.5")


# ------------------------------------------------------------------------------- 3: recording a host key

def test_recorded_host_key_after_a_line_without_newline(lab, tmp_path):
    d = lab.start("pi-new", known=False)
    other = lab.start("pi-other", known=False)
    known = tmp_path / "fresh" / "ssh" / "known_hosts"   # its folder does not exist yet
    old_umask = os.umask(0o022)
    try:
        dev = dev_of(lab, "pi-new", known_hosts=str(known))
        with connect(dev, accept_new=True):
            pass
        assert stat.S_IMODE(known.stat().st_mode) == 0o600
        assert stat.S_IMODE(known.parent.stat().st_mode) == 0o700
        # a file whose last line has no newline (hand-edited): the new key must not glue onto it
        known.write_text(other.known_line)
        os.chmod(known, 0o644)
        with connect(dev, accept_new=True) as c:
            assert c.run("true").rc == 0
    finally:
        os.umask(old_umask)
    lines = known.read_text().splitlines()
    assert lines == [other.known_line, d.known_line]
    assert stat.S_IMODE(known.stat().st_mode) == 0o644   # an existing file keeps its mode
    with connect(dev_of(lab, "pi-other", known_hosts=str(known))) as c:  # both entries work
        assert c.run("true").rc == 0
    assert not [p for p in known.parent.iterdir() if p.name != "known_hosts"]  # no temporary left


def test_concurrent_first_connections_record_every_key(lab):
    names = [f"pi-{i}" for i in range(6)]
    for n in names:
        lab.start(n, known=False)
    inv = I.load(lab.inventory())
    errors = []

    def first(name):
        try:
            with connect(inv.get(name), accept_new=True):
                pass
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=first, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    text = lab.known_hosts.read_text()
    assert sorted(text.splitlines()) == sorted(lab.devices[n].known_line for n in names)


# ------------------------------------------------------------------------------ 8: SFTP that never answers

def _kill_sleepers(marker: str):
    """The subsystem processes this test's sshd started (found by their unique argument), by pid."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"/bin/sleep", marker.encode()]:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass


def test_sftp_that_never_answers_fails_bench_with_exit_3(lab, tmp_path):
    marker = str(3000 + os.getpid() % 1000)   # sleep seconds, unique to this test run
    d = lab.start("pi-mute", sftp=f"/bin/sleep {marker}")
    art = tmp_path / "m.tflite"
    art.write_bytes(os.urandom(100_000))
    inv = lab.inventory()
    try:
        t0 = time.monotonic()
        p = edgeopt_cli("bench", art, "--device", "pi-mute", "--inventory", inv, "--runs", 1, "--min-seconds", 0,
                        env={"EDGEOPT_STALL_TIMEOUT": "3"}, timeout=60)
        took = time.monotonic() - t0
        assert p.returncode == 3, p.stderr
        assert took < 40
        lines = [x for x in p.stderr.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and "pi-mute" in lines[0] and "SFTP" in lines[0], p.stderr
        assert "Traceback" not in p.stderr
        # the push function itself, with the default deadline lowered the same way
        dev = dev_of(lab, "pi-mute")
        os.environ["EDGEOPT_STALL_TIMEOUT"] = "2"
        try:
            with connect(dev) as c:
                t0 = time.monotonic()
                with pytest.raises(DeviceError, match="did not answer within 2 s") as e:
                    push(c, str(art), c.expand(dev.workdir), progress=False)
                assert time.monotonic() - t0 < 20 and e.value.exit_code == 3
        finally:
            del os.environ["EDGEOPT_STALL_TIMEOUT"]
        assert not [f for f in d.files() if f.endswith("m.tflite")]
    finally:
        _kill_sleepers(marker)


# ------------------------------------------------------------------------------------ 9: a flood of output

def test_remote_output_is_capped(lab, monkeypatch, tmp_path):
    lab.start("pi-01")
    monkeypatch.setattr(connection_module, "MAX_OUTPUT", 1 << 20, raising=False)
    for dev in (dev_of(lab, "pi-01"), I.local_device(workdir=str(tmp_path / "wd"))):
        with connect(dev) as c:
            t0 = time.monotonic()
            with pytest.raises(DeviceError, match="printed more than 1 MiB") as e:
                c.run("head -c 400000000 /dev/zero")   # 400 MB: not kept, stopped
            assert time.monotonic() - t0 < 20 and e.value.exit_code == 3
            assert c.run("head -c 1000 /dev/zero").stdout == b"\0" * 1000
            with pytest.raises(DeviceError, match="more than 1 MiB"):
                c.run("head -c 3000000 /dev/zero >&2")   # stderr too


def test_capped_command_leaves_the_connection_usable(lab, monkeypatch):
    """The CI flake (transport dead, "Socket exception: Bad file descriptor") reproduced: paramiko's transport
    thread checks the channel's select pipe is open, then writes to it; a ``run`` that stopped a capped command
    closed that pipe in between. Both sides are slowed here so that the close lands in the gap every time."""
    import paramiko
    from paramiko import pipe

    def slow_set(self):   # PosixPipe.set, preempted between its check and its write
        if self._set or self._closed:
            return
        time.sleep(0.02)
        self._set = True
        os.write(self._wfd, b"*")

    close = paramiko.Channel.close

    def slow_close(self):
        time.sleep(0.005)
        close(self)

    monkeypatch.setattr(pipe.PosixPipe, "set", slow_set)
    monkeypatch.setattr(paramiko.Channel, "close", slow_close)
    monkeypatch.setattr(connection_module, "MAX_OUTPUT", 1 << 20, raising=False)
    lab.start("pi-01")
    with connect(dev_of(lab, "pi-01")) as c:
        for _ in range(3):
            with pytest.raises(DeviceError, match="printed more than 1 MiB"):
                c.run("head -c 400000000 /dev/zero")
            assert c.run("echo still here").stdout == b"still here\n"


def test_run_keeps_output_sent_after_the_exit_status(lab):
    """sshd sends the exit status when the command exits, before the output it still holds: ``run`` used to stop
    there and return a truncated stdout (a bench's JSON line lost, or half of it). It reads up to EOF, and does not
    wait forever for a background child that keeps the output open."""
    lab.start("pi-01")
    with connect(dev_of(lab, "pi-01")) as c:
        for n in (20_000_000, 20_000_000, 30_000_000):
            res = c.run(f"head -c {n} /dev/zero; echo end >&2")
            assert len(res.stdout) == n and res.stderr == b"end\n"
        t0 = time.monotonic()
        res = c.run("sleep 30 & echo $!", timeout=60)
        assert res.rc == 0 and res.stdout.strip().isdigit() and time.monotonic() - t0 < 10
        assert c.run(f"kill {int(res.stdout)}").rc == 0


def test_runner_thins_samples_keeps_true_count(onnx_model, tmp_path):
    p = subprocess.run([sys.executable, "-", "bench", str(onnx_model), "--runs", "500", "--min-seconds", "0",
                        "--warmup", "1", "--max-samples", "50"], input=runner_source(), capture_output=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    res = json.loads(p.stdout.decode().strip().splitlines()[-1])
    assert res["runs"] == 500 and res["samples_total"] == 500
    assert len(res["samples_ms"]) == 50 and len(res["timestamps_s"]) == 50
    assert res["timestamps_s"] == sorted(res["timestamps_s"]) and res["measured_s"] > 0
    # through the host, with the default cap: the true count, the runner's exact percentiles, a thinned list
    dev = I.local_device(workdir=str(tmp_path / "wd"))
    out = bench_device(dev, str(onnx_model), BenchOptions(runs=21000, min_seconds=0, warmup=1, conditions=False))
    assert out["runs"] == 21000 and out["samples_total"] == 21000 and len(out["samples_ms"]) == 20000
    assert out["timing"]["measured_s"] >= sum(out["samples_ms"]) / 1e3


# --------------------------------------------------------------------------------- 11: interrupted bench

def _wait_runner(lock: Path, timeout=60) -> int:
    """The runner's pid once it holds the device lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = lock.read_text().strip()
        except OSError:
            text = ""
        if text.startswith("pid ") and pid_alive(int(text.split()[1])):
            return int(text.split()[1])
        time.sleep(0.05)
    raise AssertionError("the runner never took the device lock")


def _proc_state(pid: int) -> str:
    """What a process that should be gone is doing: its state, parent, process group, command and threads."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        threads = sorted(Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0]
                         + Path(f"/proc/{pid}/task/{t}/wchan").read_text()
                         for t in os.listdir(f"/proc/{pid}/task"))
        return f"pid {pid} state {stat[0]} ppid {stat[1]} pgid {stat[2]} cmd {cmd!r} threads {threads}"
    except OSError as exc:
        return f"pid {pid}: {exc}"


def _lock_free(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _interrupt_and_check(argv, env, locks: list[Path]):
    """Start ``edgeopt ARGV``, Ctrl-C it once every runner holds its device lock: edgeopt says so and exits 130
    at once, and every runner is gone with its lock free within seconds."""
    # A shell without job control starts `cmd &` with SIGINT ignored, and an ignored SIGINT is inherited and kept
    # (Python then never raises KeyboardInterrupt): CI launched that way would see edgeopt ignore the Ctrl-C. The
    # user's terminal delivers it, so edgeopt starts here as it does there: SIGINT at its default, unblocked.
    shim = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); os.execv(sys.argv[1], sys.argv[1:])")
    p = subprocess.Popen([sys.executable, "-c", shim, EDGEOPT, *map(str, argv)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, **env}, start_new_session=True)
    try:
        runners = [_wait_runner(lock) for lock in locks]
        time.sleep(0.5)
        os.kill(p.pid, signal.SIGINT)   # Ctrl-C, delivered to edgeopt alone
        try:
            _out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            err = b"(edgeopt still running 30 s after Ctrl-C)"
        deadline = time.monotonic() + 10
        while any(pid_alive(r) for r in runners) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(r) for r in runners), \
            f"a runner kept running after the interrupt: {[_proc_state(r) for r in runners]}; edgeopt: {err!r}"
        # the leader shows as a zombie while its other threads still exit (and hold the lock): allow a moment
        while not all(_lock_free(lock) for lock in locks) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
        assert all(_lock_free(lock) for lock in locks)
        assert p.returncode == 130 and "error: interrupted" in err.decode(), err.decode()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_interrupted_ssh_bench_stops_the_runner(lab, onnx_model):
    d = lab.start("pi-01")
    argv = ["bench", onnx_model, "--device", "pi-01", "--inventory", lab.inventory(), "--sustained", 60,
            "--min-seconds", 0, "--runs", 1]
    _interrupt_and_check(argv, {}, [Path(d.workdir) / "bench.lock"])


def test_interrupted_bench_on_two_devices_stops_both_runners(lab, onnx_model):
    devs = [lab.start("pi-01"), lab.start("pi-02")]
    argv = ["bench", onnx_model, "--device", "pi-01,pi-02", "--inventory", lab.inventory(), "--sustained", 60,
            "--min-seconds", 0, "--runs", 1]
    _interrupt_and_check(argv, {}, [Path(d.workdir) / "bench.lock" for d in devs])


def test_interrupted_local_bench_kills_its_process_group(onnx_model, tmp_path):
    wd = tmp_path / "wd"
    argv = ["bench", onnx_model, "--local", "--sustained", 60, "--min-seconds", 0, "--runs", 1]
    _interrupt_and_check(argv, {"EDGEOPT_LOCAL_WORKDIR": str(wd)}, [wd / "bench.lock"])


def test_runner_time_limit_and_lost_controller(onnx_model):
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-", "bench", str(onnx_model), "--sustained", "60", "--time-limit", "2"],
                       input=runner_source(), capture_output=True, timeout=60)
    assert time.monotonic() - t0 < 20 and p.returncode == 3
    assert json.loads(p.stdout.decode().strip().splitlines()[-1])["kind"] == "time_limit"
    # the reader of its output goes away (the SSH channel or the local edgeopt died): the runner ends
    p = subprocess.Popen([sys.executable, "-", "bench", str(onnx_model), "--sustained", "60"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        p.stdin.write(runner_source())
        p.stdin.close()
        time.sleep(3)
        assert p.poll() is None
        p.stdout.close()
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
            pytest.fail("the runner outlived its controller")


# ----------------------------------------------------------------------- 12: lock, artifact, conditions

def test_lock_file_symlink_is_not_followed(onnx_model, tmp_path):
    victim = tmp_path / "precious"
    victim.write_text("do not touch\n")
    lock = tmp_path / "bench.lock"
    lock.symlink_to(victim)
    p = subprocess.run([sys.executable, "-", "bench", str(onnx_model), "--lock", str(lock), "--runs", "1",
                        "--min-seconds", "0"], input=runner_source(), capture_output=True, timeout=120)
    res = json.loads(p.stdout.decode().strip().splitlines()[-1])
    assert p.returncode == 3 and res["kind"] == "unsafe_lock", res
    assert victim.read_text() == "do not touch\n"
    hard = tmp_path / "hard.lock"
    os.link(victim, hard)
    p = subprocess.run([sys.executable, "-", "bench", str(onnx_model), "--lock", str(hard), "--runs", "1",
                        "--min-seconds", "0"], input=runner_source(), capture_output=True, timeout=120)
    assert p.returncode == 3 and victim.read_text() == "do not touch\n"


def test_push_resends_a_same_size_tampered_artifact(lab, tmp_path):
    lab.start("pi-01")
    art = tmp_path / "model.tflite"
    art.write_bytes(os.urandom(100_000))
    dev = dev_of(lab, "pi-01")
    with connect(dev) as c:
        r1 = push(c, str(art), c.expand(dev.workdir))
        final = Path(r1.path)
        final.write_bytes(b"X" * 100_000)           # same size, other bytes
        r2 = push(c, str(art), c.expand(dev.workdir))
    assert (r2.skipped, r2.bytes) == (False, 100_000)
    assert final.read_bytes() == art.read_bytes()


def test_bench_refuses_a_result_for_another_artifact(onnx_model, tmp_path, monkeypatch):
    other = Path(small_cnn_onnx(tmp_path / "other.onnx", channels=8))
    real_push = bench_module.push

    def push_then_swap(conn, local, workdir, **kw):
        res = real_push(conn, local, workdir, **kw)
        if local == str(onnx_model):
            Path(res.path).write_bytes(other.read_bytes())   # replaced on the device after the push
        return res
    monkeypatch.setattr(bench_module, "push", push_then_swap)
    dev = I.local_device(workdir=str(tmp_path / "wd"))
    with pytest.raises(DeviceError, match="not the one pushed") as e:
        bench_device(dev, str(onnx_model), BenchOptions(runs=2, min_seconds=0, warmup=0, conditions=False))
    assert e.value.exit_code == 3
    assert not list((tmp_path / "wd" / "artifacts").rglob("*.onnx"))   # removed: the next push sends it again


def test_before_conditions_are_taken_inside_the_lock(onnx_model, tmp_path, monkeypatch):
    log = tmp_path / "probe.log"
    monkeypatch.setattr(conditions_module, "command", lambda: f"date +%s.%N >> {log}")
    wd = tmp_path / "wd"
    wd.mkdir()
    dev = I.local_device(workdir=str(wd))
    fd = os.open(wd / "bench.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)                  # another benchmark holds the device
    out = {}
    t = threading.Thread(target=lambda: out.update(r=bench_device(
        dev, str(onnx_model), BenchOptions(runs=2, min_seconds=0, warmup=0))))
    t.start()
    try:
        time.sleep(2.5)
        released = time.time()
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    t.join(120)
    assert out["r"]["runs"] == 2
    stamps = [float(x) for x in log.read_text().split()]
    assert len(stamps) == 2 and all(s >= released for s in stamps), (stamps, released)
