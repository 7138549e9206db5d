"""Which devices a device command (bench, deploy) runs on: the DEVICE_SELECTION options of edgeopt.cli.options
(--device, --all, --local, --inventory), given to the rules the Python API uses too (edgeopt.devices.selection)."""
from __future__ import annotations


def select_devices(values, family: str | None = None, local_target: str | None = None, command: str = "bench"):
    """(devices, single): the devices ``values`` (the DEVICE_SELECTION options) ask for; ``single`` when exactly
    one was named (JSON: an object). Without a choice: every device of ``family`` when given (deploy), else this
    machine when there is no inventory at all."""
    from edgeopt.devices import selection

    return selection.select(values.device, all_devices=values.all_devices, local=values.local,
                            inventory_path=values.inventory, family=family, local_target=local_target,
                            command=command, wording=selection.CLI)
