"""Target profiles as data, named like TVM's target tags.

Each profile says what a board can run: CPU architecture, the artifact formats it prefers (first is
the primary artifact), the runtime and delegate that run them, the default I/O dtype and thread count,
and the compiler a host must run (if any). Facts come from the vendors' documentation, cited per board.

Per-board behaviour (float ops allowed or not, the Edge TPU pre-flight, which board facts a probe checks) is
a field of the profile too, and the rest of edgeopt reads those fields, never the family or the name:
``family`` only groups profiles for device selection (``--target rpi``, ``deploy --target jetson``). A new
board is a new profile here. tests/test_targets.py fails if a module compares a family or name to a string.

Nothing here imports a converter or a framework: converters are named by dotted path and imported only
when used (see :mod:`edgeopt.converters`).
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field

__all__ = ["Target", "TARGETS", "ALIASES", "FAMILIES", "FLOAT_FALLBACK", "BOARD_PROBES", "get", "names",
           "resolve_name"]


@dataclass(frozen=True)
class Target:
    """One kind of edge board."""

    name: str
    family: str
    description: str
    cpu: str
    cpu_arch: str
    cores: int
    accelerator: str | None
    formats: tuple[str, ...]        # artifact kinds in order of preference; formats[0] is primary
    runtime: str                    # runtime the device runs the primary artifact with
    io_dtype: str                   # default I/O dtype of the primary artifact
    delegate: str | None            # TFLite delegate, or None
    threads: int                    # default benchmark/inference threads
    host_compiler: str | None       # tool a host runs on the artifact before deploying
    static_shapes: bool = False     # accelerator needs fixed shapes and batch 1
    memory_gb: float | None = None
    source: str = ""                # where the facts come from
    notes: tuple[str, ...] = field(default_factory=tuple)
    # ---- behaviour: what edgeopt does differently for this board (read these, never `family` or `name`)
    # Where float ops of an INT8 model would run, which decides whether edgeopt may leave any in float:
    #   "allowed"  where the INT8 ops run (a Pi's CPU float kernels; TensorRT runs the float layers of a QDQ
    #              model in FP16): --allow-float-fallback is accepted, accuracy recovery keeps layers in float.
    #   "cpu"      off the accelerator, on the host CPU (the Edge TPU maps nothing after the first float op, so
    #              the rest of the model leaves the TPU): the model must be full-integer, so
    #              --allow-float-fallback and a float .tflite input are refused; recovery keeps float layers
    #              only with --allow-cpu-ops, and otherwise reports how many ops that would move to the CPU.
    #   "refused"  nowhere: full-integer like "cpu", and recovery never keeps a layer in float.
    float_fallback: str = "allowed"
    # The Edge TPU runs only what edgetpu_compiler maps: run edgeopt's op-by-op pre-flight on the TFLite artifact
    # (manifest.edgetpu: which ops map, where the single TPU partition ends) and the compiler when it is on PATH.
    edgetpu_preflight: bool = False
    # The accelerator is a plug-in (USB) for any host, so the host's CPU architecture says nothing about whether
    # the device fits the profile: a probe does not warn about it.
    any_host_arch: bool = False
    # Which board facts a device probe checks against the profile: "raspberrypi" (the device-tree model must
    # name a Raspberry Pi), "tegra" (/etc/nv_tegra_release or a Jetson device-tree model), None (nothing to
    # check: e.g. a USB accelerator on whatever host).
    board_probe: str | None = None
    # Words of the device-tree model that identify this exact board (a Pi 4 is not a Pi 5), so a probe can warn
    # when the inventory declares the wrong one; empty: only board_probe's check.
    board_models: tuple[str, ...] = ()
    # What `edgeopt devices --setup` installs into the device's own venv (<workdir>/venv, made with
    # --system-site-packages so the OS's numpy and JetPack's TensorRT stay visible): pip requirements, from
    # wheels the host downloads for the device's CPU, glibc and Python. setup_packages must all have a wheel
    # (setup fails naming the one that has none); each of setup_optional is added only where a wheel fits.
    setup_packages: tuple[str, ...] = ()
    setup_optional: tuple[str, ...] = ()
    # A system library the runtime needs that no wheel provides, and the command that installs it on the
    # board: setup checks for it and says so (it never runs sudo).
    system_runtime: str | None = None
    system_install: str | None = None

    def __post_init__(self):
        # profiles are data someone types: a misspelt value would silently pick the wrong behaviour
        if self.float_fallback not in FLOAT_FALLBACK:
            raise ValueError(f"{self.name}: float_fallback {self.float_fallback!r}: expected one of "
                             f"{', '.join(FLOAT_FALLBACK)}")
        if self.board_probe not in BOARD_PROBES:
            raise ValueError(f"{self.name}: board_probe {self.board_probe!r}: expected one of "
                             f"{', '.join(map(str, BOARD_PROBES))}")

    @property
    def integer_only(self) -> bool:
        """Whether every op (and so the whole artifact) must be integer: float ops cannot stay where INT8 runs."""
        return self.float_fallback != "allowed"

    def to_dict(self) -> dict:
        """The profile as JSON-ready data (``edgeopt targets --json``)."""
        d = asdict(self)
        d["formats"] = list(self.formats)
        d["notes"] = list(self.notes)
        d["board_models"] = list(self.board_models)
        d["setup_packages"] = list(self.setup_packages)
        d["setup_optional"] = list(self.setup_optional)
        return d


FLOAT_FALLBACK = ("allowed", "cpu", "refused")
BOARD_PROBES = (None, "raspberrypi", "tegra")


# Artifact kinds (see edgeopt.converters.ROUTES):
#   tflite-int8   full-integer INT8 TFLite (int8 weights and activations, TFLITE_BUILTINS_INT8)
#   onnx-qdq-int8 ONNX with QuantizeLinear/DequantizeLinear pairs, symmetric, zero point 0 (TensorRT explicit quantization)
#   onnx-fp16     ONNX with float16 weights and compute, float32 I/O
_PROFILES = [
    # Raspberry Pi 4 Model B product brief and raspberrypi.com/documentation/computers/processors.html:
    # Broadcom BCM2711, quad-core Cortex-A72 (ARMv8-A) 64-bit @ 1.8 GHz (1.5 GHz on early boards), 1-8 GB.
    Target(
        name="rpi4", family="rpi", description="Raspberry Pi 4 Model B (BCM2711)",
        cpu="4x Cortex-A72 @ 1.5-1.8 GHz", cpu_arch="aarch64", cores=4, accelerator=None,
        formats=("tflite-int8",), runtime="ai_edge_litert", io_dtype="float32", delegate="xnnpack",
        threads=4, host_compiler=None, memory_gb=8,
        board_probe="raspberrypi", board_models=("Raspberry Pi 4", "Compute Module 4", "Raspberry Pi 400"),
        setup_packages=("ai-edge-litert",),
        source="Raspberry Pi 4 Model B product brief; raspberrypi.com/documentation/computers/processors.html#bcm2711",
    ),
    # Raspberry Pi 5 product brief and processors.html#bcm2712: quad-core Cortex-A76 (ARMv8.2-A) @ 2.4 GHz,
    # 2-16 GB LPDDR4X. The A76's dot-product instructions make XNNPACK's INT8 kernels the fast path.
    Target(
        name="rpi5", family="rpi", description="Raspberry Pi 5 (BCM2712)",
        cpu="4x Cortex-A76 @ 2.4 GHz", cpu_arch="aarch64", cores=4, accelerator=None,
        formats=("tflite-int8",), runtime="ai_edge_litert", io_dtype="float32", delegate="xnnpack",
        threads=4, host_compiler=None, memory_gb=8,
        board_probe="raspberrypi", board_models=("Raspberry Pi 5", "Compute Module 5", "Raspberry Pi 500"),
        setup_packages=("ai-edge-litert",),
        source="Raspberry Pi 5 product brief; raspberrypi.com/documentation/computers/processors.html#bcm2712",
    ),
    # NVIDIA Jetson Orin Nano / Orin NX / AGX Orin series data sheets and JetPack 6 docs: Cortex-A78AE CPU
    # cluster, Ampere GPU with Tensor Cores; TensorRT runs INT8 via explicit Q/DQ (symmetric, zero point 0)
    # and FP16. INT8 QDQ is primary; FP16 is the fallback when INT8 accuracy is not enough.
    Target(
        name="jetson-orin-nano", family="jetson", description="NVIDIA Jetson Orin Nano 8GB",
        cpu="6x Cortex-A78AE @ 1.5 GHz", cpu_arch="aarch64", cores=6,
        accelerator="Ampere GPU, 1024 CUDA cores, 32 Tensor Cores",
        formats=("onnx-qdq-int8", "onnx-fp16"), runtime="tensorrt", io_dtype="float32", delegate=None,
        threads=6, host_compiler=None, memory_gb=8, board_probe="tegra", board_models=("Orin Nano",),
        setup_optional=("onnxruntime",),
        source="Jetson Orin Nano Series Data Sheet (DS-11105); TensorRT Developer Guide, 'Explicit Quantization'",
        notes=("TensorRT engines are built on the device (trtexec) and cached by artifact hash and TensorRT version.",),
    ),
    Target(
        name="jetson-orin-nx", family="jetson", description="NVIDIA Jetson Orin NX 16GB",
        cpu="8x Cortex-A78AE @ 2.0 GHz", cpu_arch="aarch64", cores=8,
        accelerator="Ampere GPU, 1024 CUDA cores, 32 Tensor Cores; 2x NVDLA v2",
        formats=("onnx-qdq-int8", "onnx-fp16"), runtime="tensorrt", io_dtype="float32", delegate=None,
        threads=8, host_compiler=None, memory_gb=16, board_probe="tegra", board_models=("Orin NX",),
        setup_optional=("onnxruntime",),
        source="Jetson Orin NX Series Data Sheet (DS-10712); TensorRT Developer Guide, 'Explicit Quantization'",
    ),
    Target(
        name="jetson-agx-orin", family="jetson", description="NVIDIA Jetson AGX Orin 64GB",
        cpu="12x Cortex-A78AE @ 2.2 GHz", cpu_arch="aarch64", cores=12,
        accelerator="Ampere GPU, 2048 CUDA cores, 64 Tensor Cores; 2x NVDLA v2",
        formats=("onnx-qdq-int8", "onnx-fp16"), runtime="tensorrt", io_dtype="float32", delegate=None,
        threads=12, host_compiler=None, memory_gb=64, board_probe="tegra", board_models=("AGX Orin",),
        setup_optional=("onnxruntime",),
        source="Jetson AGX Orin Series Data Sheet (DS-10662); TensorRT Developer Guide, 'Explicit Quantization'",
    ),
    # coral.ai/docs/edgetpu/models-intro: the Edge TPU runs only fully 8-bit quantized TFLite models with
    # static tensor sizes (batch 1), compiled by edgetpu_compiler on a host; ops after the first unsupported
    # one run on the CPU. coral.ai/docs/accelerator/datasheet: USB Accelerator, Edge TPU 4 TOPS (int8),
    # attached to any host (often a Pi, aarch64). coral.ai/docs/dev-board/datasheet: NXP i.MX 8M, 4x Cortex-A53
    # @ 1.5 GHz + Cortex-M4F, 1 GB LPDDR4, Edge TPU.
    Target(
        name="coral-usb", family="coral", description="Coral USB Accelerator (Edge TPU) on a host",
        cpu="host CPU (often Raspberry Pi, aarch64)", cpu_arch="aarch64", cores=4,
        accelerator="Edge TPU, 4 TOPS int8",
        formats=("tflite-int8",), runtime="ai_edge_litert", io_dtype="uint8", delegate="edgetpu",
        threads=1, host_compiler="edgetpu_compiler", static_shapes=True, memory_gb=None,
        float_fallback="cpu", edgetpu_preflight=True, any_host_arch=True,
        setup_packages=("ai-edge-litert",), system_runtime="libedgetpu",
        system_install="sudo apt install libedgetpu1-std (after adding the Coral apt repository: "
                       "coral.ai/docs/accelerator/get-started)",
        source="coral.ai/docs/edgetpu/models-intro (model requirements); coral.ai/docs/accelerator/datasheet",
    ),
    Target(
        name="coral-devboard", family="coral", description="Coral Dev Board (NXP i.MX 8M + Edge TPU)",
        cpu="4x Cortex-A53 @ 1.5 GHz + Cortex-M4F", cpu_arch="aarch64", cores=4,
        accelerator="Edge TPU, 4 TOPS int8",
        formats=("tflite-int8",), runtime="ai_edge_litert", io_dtype="uint8", delegate="edgetpu",
        threads=1, host_compiler="edgetpu_compiler", static_shapes=True, memory_gb=1,
        float_fallback="cpu", edgetpu_preflight=True,
        setup_packages=("ai-edge-litert",), system_runtime="libedgetpu",
        system_install="sudo apt install libedgetpu1-std (Mendel Linux ships it; else the Coral apt "
                       "repository: coral.ai/docs/accelerator/get-started)",
        source="coral.ai/docs/edgetpu/models-intro; coral.ai/docs/dev-board/datasheet",
    ),
]

TARGETS: dict[str, Target] = {t.name: t for t in _PROFILES}
ALIASES: dict[str, str] = {"rpi": "rpi5", "jetson": "jetson-orin-nano", "coral": "coral-usb"}
# a family is a group of profiles for device selection, so it is whatever the profiles name
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(t.family for t in _PROFILES))


def names() -> list[str]:
    """All accepted target names: profiles and family aliases."""
    return sorted(TARGETS) + sorted(ALIASES)


def resolve_name(name: str) -> str | None:
    """The profile name for a profile or alias (case-insensitive), or None."""
    key = (name or "").strip().lower()
    key = ALIASES.get(key, key)
    return key if key in TARGETS else None


def suggest(name: str) -> list[str]:
    """Close matches for an unknown name, for a 'did you mean' hint."""
    return difflib.get_close_matches((name or "").lower(), names(), n=3, cutoff=0.5)


def get(name: str) -> Target:
    """The profile for a name or family alias; KeyError with a 'did you mean' hint otherwise."""
    resolved = resolve_name(name)
    if resolved is None:
        hint = suggest(name)
        msg = f"unknown target {name!r}"
        if hint:
            msg += f" (did you mean {' or '.join(repr(h) for h in hint)}?)"
        raise KeyError(msg)
    return TARGETS[resolved]


def in_family(name: str, family_or_name: str) -> bool:
    """Whether profile `name` is `family_or_name` itself or belongs to that family."""
    t = TARGETS.get(resolve_name(name) or "")
    if t is None:
        return False
    if family_or_name in FAMILIES:
        return t.family == family_or_name
    return t.name == resolve_name(family_or_name)
