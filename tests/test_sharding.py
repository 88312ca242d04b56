"""``--shard k/n``: parsing (0-based k, one-line errors), round-robin selection that covers every record once, and
the checks every merge makes on its parts."""

import pytest

from tga_fast.errors import UserError
from tga_fast.sharding import Shard, order_parts, parse_shard, settings_difference


def test_parse_shard():
    assert parse_shard("3/8") == Shard(3, 8) and parse_shard(" 0 / 1 ") == Shard(0, 1) and parse_shard(None) is None
    assert str(Shard(3, 8)) == "3/8" and Shard(3, 8).tag == "part-3-of-8"
    with pytest.raises(UserError, match=r"k is 0-based and must be in 0..7 .*--array=0-7"):
        parse_shard("8/8")  # a 1-based Slurm array (--array=1-8) ends here
    with pytest.raises(UserError, match="k is 0-based"):
        parse_shard("-1/8")
    with pytest.raises(UserError, match="n must be a whole number >= 1"):
        parse_shard("0/0")
    for bad in ("1-8", "1/", "a/b", "1/8/2", ""):
        with pytest.raises(UserError, match="--shard must be k/n"):
            parse_shard(bad)


@pytest.mark.parametrize("total", [0, 1, 7, 8, 9, 23])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shards_cover_every_record_once_in_order(total, count):
    parts = [list(Shard(k, count).select(range(total))) for k in range(count)]
    assert sorted(sum(parts, [])) == list(range(total))
    assert [len(p) for p in parts] == [Shard(k, count).size(total) for k in range(count)]
    assert all(p == sorted(p) for p in parts)
    # Record p is the (p // n)-th of shard p % n: what the merges rely on.
    assert [parts[p % count][p // count] for p in range(total)] == list(range(total))


def test_part_names(tmp_path):
    shard = Shard(1, 4)
    assert shard.part_file(tmp_path / "out.jsonl") == tmp_path / "out.part-1-of-4.jsonl"
    assert shard.part_file(tmp_path / "out.json") == tmp_path / "out.part-1-of-4.jsonl"  # parts stream as JSONL
    assert shard.part_folder(tmp_path / "dsr.v2") == tmp_path / "dsr.v2.part-1-of-4"


def test_order_parts_checks():
    names = ["a", "b", "c"]
    assert order_parts([(Shard(2, 3), "C"), (Shard(0, 3), "A"), (Shard(1, 3), "B")], names) == ["A", "B", "C"]
    with pytest.raises(UserError, match=r"^shard 1/3 missing: 2 of 3 parts given"):
        order_parts([(Shard(0, 3), "A"), (Shard(2, 3), "C")], names)
    with pytest.raises(UserError, match=r"^shard 0/3 is given twice: a and b"):
        order_parts([(Shard(0, 3), "A"), (Shard(0, 3), "A"), (Shard(1, 3), "B")], names)
    with pytest.raises(UserError, match=r"different n \(a is 0/3, b is 1/2\)"):
        order_parts([(Shard(0, 3), "A"), (Shard(1, 2), "B")], names)
    with pytest.raises(UserError, match="no parts"):
        order_parts([], [])
    assert settings_difference({"shard": 1, "a": 1, "b": 2}, {"shard": 2, "a": 1, "c": 3}) == ["b", "c"]
