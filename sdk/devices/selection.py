"""Which devices ``bench`` and ``deploy`` run on: one set of rules for the command line and the Python API.

Named devices (``pi-01``, ``pi-01,pi-02``, a list, or :class:`~edgeopt.devices.inventory.Device` objects), every
device (``--all``), this machine (``--local``), or by default every device of the target's family (deploy);
with no inventory at all, this machine is the device. Only the words of the errors differ between the two
faces (``--device`` vs ``devices=``), so they are passed in as :class:`Wording`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from edgeopt.devices import inventory
from edgeopt.errors import UsageError

__all__ = ["Wording", "CLI", "API", "select"]


@dataclass(frozen=True)
class Wording:
    """How a face of edgeopt names the choices in its errors, and whether it says when it falls back."""

    conflict: str       # more than one of names / all / local
    family_hint: str    # no device of the family in the inventory
    which: str          # nothing chosen and an inventory to choose from
    notes: bool         # say on stderr that this machine is used because there is no inventory


CLI = Wording(conflict="give one of --device, --all, --local",
              family_hint="name devices with --device, or use --local",
              which="give --device NAME[,NAME...], --all or --local", notes=True)
API = Wording(conflict="give devices or local=True, not both", family_hint="name devices, or use local=True",
              which="name them, or use local=True", notes=False)


def select(names=None, *, all_devices: bool = False, local: bool = False, inventory_path=None,
           family: str | None = None, local_target: str | None = None, command: str = "bench",
           wording: Wording = CLI) -> tuple[list, bool]:
    """(devices, single): the devices asked for; ``single`` when exactly one was named (JSON: an object).

    Without a choice: every device of ``family`` when given (deploy), else this machine when there is no
    inventory at all."""
    if names is not None and not isinstance(names, (str, list, tuple)):
        names = [names]
    if isinstance(names, str):
        names = [names]
    if sum(bool(x) for x in (names, all_devices, local)) > 1:
        raise UsageError(wording.conflict)
    if local:
        return [inventory.local_device(target=local_target)], True
    if names and all(isinstance(d, inventory.Device) for d in names):
        return list(names), len(names) == 1
    inv = inventory.load(inventory_path)
    if names:
        devs = inv.select(names)
        return devs, len(devs) == 1 and len(names) == 1 and "," not in str(names[0])
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
            _note(wording, "no inventory, deploying to this machine (--local)")
            return [inventory.local_device(target=local_target)], False
        raise UsageError(f"no device in {inv.path} has a target in the {family} family", hint=wording.family_hint)
    if inv.path is None:
        _note(wording, "no inventory, benchmarking on this machine (--local)")
        return [inventory.local_device(target=local_target)], True
    raise UsageError(f"{command}: which devices? {wording.which}",
                     hint=f"devices in {inv.path}: {', '.join(inv.devices) or 'none'}")


def _note(wording: Wording, text: str) -> None:
    if wording.notes:
        sys.stderr.write(f"note: {text}\n")
