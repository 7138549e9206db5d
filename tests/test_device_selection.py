"""One set of device-selection rules for the command line and the Python API (edgeopt.devices.selection)."""
import pytest

from edgeopt.devices import selection
from edgeopt.errors import UsageError


@pytest.fixture
def lab_toml(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEOPT_INVENTORY", raising=False)
    p = tmp_path / "edgeopt.toml"
    p.write_text('[devices.pi-01]\nhost = "h1"\ntarget = "rpi5"\n[devices.pi-02]\nhost = "h2"\ntarget = "rpi4"\n'
                 '[devices.jet]\nhost = "h3"\ntarget = "jetson-orin-nano"\n')
    return p


def test_names_family_and_single(lab_toml):
    devs, single = selection.select(["pi-01"], inventory_path=lab_toml)
    assert [d.name for d in devs] == ["pi-01"] and single
    devs, single = selection.select("pi-01,jet", inventory_path=lab_toml, wording=selection.API)
    assert [d.name for d in devs] == ["pi-01", "jet"] and not single
    devs, single = selection.select(None, inventory_path=lab_toml, family="rpi", command="deploy")
    assert [d.name for d in devs] == ["pi-01", "pi-02"] and not single
    devs, _ = selection.select(devs[0], wording=selection.API)  # a Device object as it is
    assert [d.name for d in devs] == ["pi-01"]


@pytest.mark.parametrize("wording, conflict, which", [
    (selection.CLI, "give one of --device, --all, --local", "give --device NAME[,NAME...], --all or --local"),
    (selection.API, "give devices or local=True, not both", "name them, or use local=True")])
def test_errors_in_each_face_s_words(lab_toml, wording, conflict, which):
    with pytest.raises(UsageError, match=conflict.replace("[", r"\[").replace("]", r"\]")):
        selection.select(["pi-01"], local=True, wording=wording)
    with pytest.raises(UsageError) as e:
        selection.select(None, inventory_path=lab_toml, wording=wording)
    assert str(e.value) == f"bench: which devices? {which}" and "pi-01, pi-02, jet" in e.value.hint
    with pytest.raises(UsageError) as e:
        selection.select(None, inventory_path=lab_toml, family="coral", wording=wording)
    assert e.value.hint == wording.family_hint


def test_no_inventory_means_this_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("EDGEOPT_INVENTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    for wording, noted in ((selection.CLI, True), (selection.API, False)):
        devs, single = selection.select(None, local_target="rpi5", wording=wording)
        assert [d.target for d in devs] == ["rpi5"] and single
        assert ("note: no inventory, benchmarking on this machine" in capsys.readouterr().err) is noted
