"""Which devices a device command (bench, deploy) runs on: the DEVICE_SELECTION options of edgeopt.cli.options
(--device, --all, --local, --inventory) turned into inventory devices."""
from __future__ import annotations

import sys


def select_devices(values, family: str | None = None, local_target: str | None = None, command: str = "bench"):
    """(devices, single): the devices ``values`` (the DEVICE_SELECTION options) ask for; ``single`` when exactly
    one was named (JSON: an object). Without a choice: every device of ``family`` when given (deploy), else this
    machine when there is no inventory at all."""
    from edgeopt.devices import inventory
    from edgeopt.errors import UsageError

    device, all_devices, local = values.device, values.all_devices, values.local
    chosen = sum(bool(x) for x in (device, all_devices, local))
    if chosen > 1:
        raise UsageError("give one of --device, --all, --local")
    if local:
        return [inventory.local_device(target=local_target)], True
    inv = inventory.load(values.inventory)
    if device:
        devs = inv.select(device)
        return devs, len(devs) == 1 and len(device) == 1 and "," not in device[0]
    if all_devices:
        if not inv.devices:
            raise UsageError("--all: the inventory has no devices" if inv.path else
                             "--all: no inventory (no edgeopt.toml here, no --inventory, no $EDGEOPT_INVENTORY)",
                             hint="use --local to run on this machine")
        return list(inv.devices.values()), False
    if family is not None:
        devs = inv.select(family=family)
        if devs:
            return devs, False
        if inv.path is None:  # no lab at all: this machine is the device
            sys.stderr.write("note: no inventory, deploying to this machine (--local)\n")
            return [inventory.local_device(target=local_target)], False
        raise UsageError(f"no device in {inv.path} has a target in the {family} family",
                         hint="name devices with --device, or use --local")
    if inv.path is None:
        sys.stderr.write("note: no inventory, benchmarking on this machine (--local)\n")
        return [inventory.local_device(target=local_target)], True
    raise UsageError(f"{command}: which devices? give --device NAME[,NAME...], --all or --local",
                     hint=f"devices in {inv.path}: {', '.join(inv.devices) or 'none'}")
