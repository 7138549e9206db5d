################################################################################
#
# edgeopt-model: convert a model with edgeopt at build time (offline), install
# its reproducible bundle (artifacts + manifest.json + edgeopt.runtime) and the
# device application into the target file system.
#
################################################################################

EDGEOPT_MODEL_VERSION = 1.0
EDGEOPT_MODEL_SITE = $(call qstrip,$(BR2_PACKAGE_EDGEOPT_MODEL_SOURCE_DIR))
EDGEOPT_MODEL_SITE_METHOD = local
EDGEOPT_MODEL_LICENSE = Proprietary

EDGEOPT_MODEL_EDGEOPT = $(call qstrip,$(BR2_PACKAGE_EDGEOPT_MODEL_EDGEOPT))
EDGEOPT_MODEL_TARGET_NAME = $(call qstrip,$(BR2_PACKAGE_EDGEOPT_MODEL_TARGET))
EDGEOPT_MODEL_MIN_TOP1 = $(call qstrip,$(BR2_PACKAGE_EDGEOPT_MODEL_MIN_TOP1))
EDGEOPT_MODEL_DIR = /usr/share/edgeopt/$(call qstrip,$(BR2_PACKAGE_EDGEOPT_MODEL_NAME))

# edgeopt runs with the build host's Python, not Buildroot's host-python3: drop
# Buildroot's Python variables. SOURCE_DATE_EPOCH (BR2_REPRODUCIBLE) makes the
# bundle byte-identical across rebuilds; otherwise its fixed default is used.
EDGEOPT_MODEL_ENV = env -u PYTHONPATH -u PYTHONHOME \
	TF_CPP_MIN_LOG_LEVEL=3 HOME=$(@D) \
	$(if $(SOURCE_DATE_EPOCH),SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH))

define EDGEOPT_MODEL_BUILD_CMDS
	rm -rf $(@D)/out $(@D)/bundle.tar.gz
	cd $(@D) && $(EDGEOPT_MODEL_ENV) $(EDGEOPT_MODEL_EDGEOPT) convert \
		$(firstword $(wildcard $(@D)/model.onnx $(@D)/model.keras $(@D)/saved_model)) \
		--target $(EDGEOPT_MODEL_TARGET_NAME) \
		--calib $(@D)/calib.npy --val $(@D)/val.npy \
		--min-top1 $(EDGEOPT_MODEL_MIN_TOP1) --out $(@D)/out
	cd $(@D) && $(EDGEOPT_MODEL_ENV) $(EDGEOPT_MODEL_EDGEOPT) bundle \
		$(@D)/out -o $(@D)/bundle.tar.gz
endef

define EDGEOPT_MODEL_INSTALL_TARGET_CMDS
	rm -rf $(TARGET_DIR)$(EDGEOPT_MODEL_DIR)
	mkdir -p $(TARGET_DIR)$(EDGEOPT_MODEL_DIR)
	tar -xzf $(@D)/bundle.tar.gz -C $(TARGET_DIR)$(EDGEOPT_MODEL_DIR) --no-same-owner
	$(EDGEOPT_MODEL_ENV) $(EDGEOPT_MODEL_EDGEOPT) bundle --verify $(TARGET_DIR)$(EDGEOPT_MODEL_DIR)
	$(INSTALL) -D -m 0755 $(@D)/app.py $(TARGET_DIR)/usr/bin/fm-classify
	$(SED) 's|^DEFAULT_DIR = .*|DEFAULT_DIR = "$(EDGEOPT_MODEL_DIR)"|' $(TARGET_DIR)/usr/bin/fm-classify
endef

$(eval $(generic-package))
