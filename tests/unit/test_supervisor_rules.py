"""The stub supervisor's reading of a served config: when a stub that left was retired by a
reload (every instance group still at full strength) rather than lost; and what of /dev/shm it
may remove."""

from __future__ import annotations

import json
from pathlib import Path

from server.supervisor import at_full_strength, model_of, remove_regions


def config(*groups: dict[str, object]) -> str:
    return json.dumps({"name": "m", "instance_group": list(groups)})


def test_a_cpu_group_is_at_full_strength_with_as_many_stubs_as_its_count() -> None:
    served = config({"name": "m_0", "count": 2, "kind": "KIND_CPU"})
    assert at_full_strength(served, ["m_0_0", "m_0_1", "other_0_0"])
    assert not at_full_strength(served, ["m_0_1", "other_0_0", "other_0_1"])  # another model's stubs do not count


def test_a_gpu_groups_count_is_per_gpu() -> None:
    served = config({"name": "m_0", "count": 2, "kind": "KIND_GPU", "gpus": [0, 1]})
    assert not at_full_strength(served, ["m_0_0", "m_0_1", "m_0_2"])  # one of four died
    assert at_full_strength(served, ["m_0_0", "m_0_1", "m_0_2", "m_0_3"])


def test_every_group_must_be_full_and_an_unreadable_config_means_lost() -> None:
    served = config({"name": "m_0", "count": 1}, {"name": "m_1", "count": 1})
    assert not at_full_strength(served, ["m_0_0"])
    assert at_full_strength(served, ["m_0_0", "m_1_0"])
    assert not at_full_strength("not json", ["m_0_0"])
    assert not at_full_strength(json.dumps({"name": "m"}), [])  # no groups: nothing says it is whole


def test_instance_stubs_name_their_model_and_the_config_stub_is_named_as_the_model() -> None:
    assert model_of("text_encoder_0_1") == "text_encoder"
    assert model_of("text_encoder") == "text_encoder"


def test_only_the_stubs_own_regions_are_removed_and_a_missing_one_is_no_error(tmp_path: Path) -> None:
    ours = "triton_python_backend_shm_region_1a2b"
    (tmp_path / ours).write_bytes(b"x")
    (tmp_path / "someone_elses").write_bytes(b"y")
    (tmp_path.parent / "outside").write_bytes(b"z")
    removed = remove_regions([ours, "triton_python_backend_shm_region_gone", "someone_elses", "../outside"], tmp_path)
    assert removed == [ours]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone_elses"]
    assert (tmp_path.parent / "outside").exists()
