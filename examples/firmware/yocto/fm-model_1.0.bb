# Fashion-MNIST classifier for the image: the INT8 model converted with edgeopt at build time (offline),
# bundled with edgeopt.runtime, installed to ${EDGEOPT_MODEL_DIR}, plus the fm-classify application.
#
# Put this recipe in your layer (e.g. meta-mylayer/recipes-ml/fm-model/) with a files/ directory holding:
#   fm.onnx      the trained model (or .keras / SavedModel: change EDGEOPT_SOURCE)
#   calib.npy    calibration samples (e.g. 200 training images, float, in the model's layout)
#   val.npy      validation samples for the accuracy check and gate
#   app.py       examples/firmware/app.py
#
# The build host needs edgeopt with its converters (pip install "edgeopt[convert]"), e.g. in a venv at
# /opt/edgeopt; set EDGEOPT = "/opt/edgeopt/bin/edgeopt" in local.conf (BitBake's PATH only holds HOSTTOOLS).
# Nothing is downloaded while building: do_compile runs without network (BitBake's default).

SUMMARY = "Fashion-MNIST INT8 classifier (edgeopt bundle) and the fm-classify device application"
DESCRIPTION = "Model artifacts converted by edgeopt at build time, with edgeopt.runtime (numpy + one runtime)."
LICENSE = "CLOSED"

SRC_URI = "file://fm.onnx \
           file://calib.npy \
           file://val.npy \
           file://app.py \
          "
# Kirkstone/Scarthgap; from Styhead on use S = "${UNPACKDIR}" and ${UNPACKDIR} below.
S = "${WORKDIR}"

# --- knobs (override in local.conf or a bbappend)
EDGEOPT ?= "edgeopt"
EDGEOPT_SOURCE ?= "${S}/fm.onnx"
# rpi5 | rpi4 | jetson-orin-nano | coral-usb | ... (see `edgeopt targets`)
EDGEOPT_TARGET ?= "rpi5"
# the build fails (exit 1) when the INT8 model agrees with FP32 on fewer validation samples than this
EDGEOPT_MIN_TOP1 ?= "0.97"
EDGEOPT_CONVERT_ARGS ?= "--calib ${S}/calib.npy --val ${S}/val.npy --min-top1 ${EDGEOPT_MIN_TOP1}"
EDGEOPT_MODEL_DIR ?= "${datadir}/edgeopt/fm"

# The device side: numpy and the runtime for the target's artifacts.
#  rpi/coral: tflite_runtime, e.g. python3-tensorflow-lite from meta-tensorflow-lite (+ libedgetpu for Coral)
#  jetson:    onnxruntime (GPU build) from your BSP/community layer
EDGEOPT_RUNTIME_RDEPENDS ?= "python3-tensorflow-lite"
RDEPENDS:${PN} = "python3-core python3-json python3-numpy ${EDGEOPT_RUNTIME_RDEPENDS}"

# No compiler or target libraries involved: the artifacts are data for any machine of the target.
INHIBIT_DEFAULT_DEPS = "1"
do_configure[noexec] = "1"

do_compile() {
    # BitBake exports SOURCE_DATE_EPOCH: the artifacts, manifest and bundle are byte-identical on every
    # rebuild from the same inputs and tools.
    export TF_CPP_MIN_LOG_LEVEL=3
    export HOME="${WORKDIR}"
    unset PYTHONPATH PYTHONHOME
    rm -rf ${B}/fm ${B}/fm.tar.gz
    ${EDGEOPT} convert ${EDGEOPT_SOURCE} --target ${EDGEOPT_TARGET} ${EDGEOPT_CONVERT_ARGS} --out ${B}/fm
    ${EDGEOPT} bundle ${B}/fm -o ${B}/fm.tar.gz
}

do_install() {
    install -d ${D}${EDGEOPT_MODEL_DIR}
    tar -xzf ${B}/fm.tar.gz -C ${D}${EDGEOPT_MODEL_DIR} --no-same-owner
    # what goes into the image is what was bundled (SHA256SUMS also lets the device check itself:
    # cd ${EDGEOPT_MODEL_DIR} && sha256sum -c SHA256SUMS)
    ${EDGEOPT} bundle --verify ${D}${EDGEOPT_MODEL_DIR}
    install -D -m 0755 ${S}/app.py ${D}${bindir}/fm-classify
    sed -i -e 's|^DEFAULT_DIR = .*|DEFAULT_DIR = "${EDGEOPT_MODEL_DIR}"|' ${D}${bindir}/fm-classify
}

# The bundle is arch-independent data + pure Python; fm-classify too.
inherit allarch
FILES:${PN} = "${EDGEOPT_MODEL_DIR} ${bindir}/fm-classify"
