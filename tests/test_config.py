import pytest

from tensorrt_llm_dwdp.config import DwdpConfig, DwdpConfigError, parse_placement


def _err(**kw):
    with pytest.raises(DwdpConfigError) as e:
        DwdpConfig(**kw)
    return e.value


def test_valid_defaults():
    c = DwdpConfig(group_size=4, num_experts=256)
    assert c.prefetch_depth == 2 and c.resolved_num_groups(8) == 2


def test_group_size_must_divide_world():
    c = DwdpConfig(group_size=3, num_experts=12)
    with pytest.raises(DwdpConfigError) as e:
        c.resolved_num_groups(8)
    assert e.value.option == "group_size" and "does not divide" in str(e.value) and "Fix:" in str(e.value)


def test_num_groups_must_match_world():
    c = DwdpConfig(group_size=4, num_experts=16, num_groups=3)
    with pytest.raises(DwdpConfigError) as e:
        c.resolved_num_groups(8)
    assert e.value.option == "num_groups" and "num_groups=2" in str(e.value)


def test_expert_counts_must_cover_all_experts():
    e = _err(group_size=4, num_experts=16, experts_per_rank=3)
    assert e.option == "experts_per_rank" and "no owner" in str(e) and ">= 4" in str(e)


def test_prefetch_count_must_add_up():
    e = _err(group_size=4, num_experts=16, experts_per_rank=4, num_prefetch_experts=10)
    assert e.option == "num_prefetch_experts" and "num_prefetch_experts=12" in str(e)
    DwdpConfig(group_size=4, num_experts=16, experts_per_rank=4, num_prefetch_experts=12)


def test_experts_per_rank_bounds():
    assert _err(group_size=2, num_experts=8, experts_per_rank=9).option == "experts_per_rank"
    assert _err(group_size=2, num_experts=8, experts_per_rank=0).option == "experts_per_rank"


def test_unowned_expert_in_explicit_placement():
    e = _err(group_size=2, num_experts=6, placement=((0, 1, 2), (3, 4)))
    assert e.option == "placement" and "[5]" in str(e) and "no owner" in str(e)


def test_placement_errors():
    assert "lists 1 ranks" in str(_err(group_size=2, num_experts=4, placement=((0, 1, 2, 3),)))
    assert "outside" in str(_err(group_size=2, num_experts=4, placement=((0, 1), (2, 7))))
    assert "twice" in str(_err(group_size=2, num_experts=4, placement=((0, 1, 1), (2, 3))))
    assert "rank 1 lists no experts" in str(_err(group_size=2, num_experts=4, placement=((0, 1, 2, 3), ())))


@pytest.mark.parametrize("depth", [0, 1])
def test_depth_at_least_two(depth):
    e = _err(group_size=2, num_experts=4, prefetch_depth=depth)
    assert e.option == "prefetch_depth" and "prefetch_depth=2" in str(e)


def test_other_option_errors():
    assert _err(group_size=0, num_experts=4).option == "group_size"
    assert _err(group_size=2, num_experts=4, slice_bytes=100).option == "slice_bytes"
    assert _err(group_size=2, num_experts=4, weight_dtype="int3").option == "weight_dtype"
    assert _err(group_size=2, num_experts=4, memory_backend="rdma").option == "memory_backend"
    assert _err(group_size=2, num_experts=4, pull_issue="magic").option == "pull_issue"


def test_buffers_that_do_not_fit():
    c = DwdpConfig(group_size=2, num_experts=4)
    c.check_memory(10, 11)
    with pytest.raises(DwdpConfigError) as e:
        c.check_memory(3 * 2**30, 2**30, where="cuda:0")
    assert "3.00 GiB" in str(e.value) and "1.00 GiB" in str(e.value) and "cuda:0" in str(e.value)


def test_parse_placement():
    assert parse_placement("0-2,7;3-6") == ((0, 1, 2, 7), (3, 4, 5, 6))


@pytest.mark.parametrize("args,option", [((0, 64, 32, 8), "MoeShape.num_layers"), ((2, 64, True, 8),
                                         "MoeShape.intermediate_size"), ((2, 64, 32, 8, (3, 3)), "MoeShape.layer_ids")])
def test_moe_shape_errors_name_the_field_and_the_fix(args, option):
    from tensorrt_llm_dwdp.shard import MoeShape
    with pytest.raises(DwdpConfigError, match="Fix:") as e:
        MoeShape(*args)
    assert e.value.option == option
