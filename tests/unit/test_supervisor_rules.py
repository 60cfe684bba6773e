"""The stub supervisor's reading of a served config: when a stub that left was retired by a
reload (every instance group still at full strength) rather than lost; and what of /dev/shm it
may remove."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.supervisor import (
    CUDA_POOL_SETTING,
    DEFAULT_CUDA_POOL_MB,
    at_full_strength,
    cuda_pool_flags,
    model_of,
    remove_regions,
)


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


def gpu_devices(tmp_path: Path, *names: str) -> Path:
    tmp_path.mkdir(exist_ok=True)
    for name in names:
        (tmp_path / name).touch()
    return tmp_path


def test_each_gpu_gets_a_cuda_pool_of_the_kits_size_unless_the_command_sizes_it(tmp_path: Path) -> None:
    devices = gpu_devices(tmp_path, "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-modeset")
    size = DEFAULT_CUDA_POOL_MB << 20
    assert cuda_pool_flags([], {}, devices) == [
        f"--cuda-memory-pool-byte-size=0:{size}",
        f"--cuda-memory-pool-byte-size=1:{size}",
    ]
    assert cuda_pool_flags(["--cuda-memory-pool-byte-size=1:4096"], {}, devices) == [
        f"--cuda-memory-pool-byte-size=0:{size}"
    ]
    assert cuda_pool_flags([], {CUDA_POOL_SETTING: "256"}, devices) == [
        f"--cuda-memory-pool-byte-size={gpu}:{256 << 20}" for gpu in (0, 1)
    ]


def test_the_visible_devices_decide_and_a_host_without_gpus_gets_no_pool_flag(tmp_path: Path) -> None:
    devices = gpu_devices(tmp_path, "nvidia0", "nvidia1", "nvidia2", "nvidiactl")
    assert len(cuda_pool_flags([], {"CUDA_VISIBLE_DEVICES": "2"}, devices)) == 1
    assert cuda_pool_flags([], {"CUDA_VISIBLE_DEVICES": "-1"}, devices) == []
    assert cuda_pool_flags([], {"CUDA_VISIBLE_DEVICES": ""}, devices) == []
    assert cuda_pool_flags([], {}, gpu_devices(tmp_path / "cpu-only", "null")) == []


def test_a_pool_size_that_is_not_whole_megabytes_is_refused_saying_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"TRITON_CUDA_MEMORY_POOL_MB='1.5G': give the CUDA memory pool"):
        cuda_pool_flags([], {CUDA_POOL_SETTING: "1.5G"}, gpu_devices(tmp_path, "nvidia0"))
