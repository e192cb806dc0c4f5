"""KVCache bookkeeping: ring slots with a sink, write rules, read sets, RoPE positions, larger capacity."""
import pytest
import torch

from vidforce.models.kv_cache import KVCache

TPF, HEADS, D = 2, 1, 4                      # tokens per frame, heads, head dim


def make(window, sink, relative=False, capacity=None, layers=1):
    return KVCache(layers, 1, HEADS, D, TPF, window, sink, "cpu", torch.float32, relative, capacity)


def fill(cache, stop, chunk=3, start=0):
    for s in range(start, stop, chunk):
        layout = cache.layout(s, s + chunk, True)
    return layout


def held(cache):
    """The frames the cache holds, in frame order."""
    return sorted(f for f in cache.slot_frame if f >= 0)


def frame_kv(frames):
    """K/V ``[1, H, F * TPF, D]`` whose every entry is its frame index (so reads can be decoded)."""
    f = torch.as_tensor(frames, dtype=torch.float32)
    return f[None, None, :, None, None].expand(1, HEADS, len(f), TPF, D).flatten(2, 3).clone()


def decode(k):
    """Frame index of each frame in a read ``[1, H, n * TPF, D]``."""
    return k.unflatten(2, (-1, TPF))[0, 0, :, 0, 0].long().tolist()


def test_slot_mapping_with_sink_known_values():
    cache = make(window=9, sink=3)
    assert [cache.slot(f) for f in range(16)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 3, 4, 5, 6, 7, 8, 3]
    big = make(window=6, sink=2, capacity=8)
    assert [big.slot(f) for f in range(12)] == [0, 1, 2, 3, 4, 5, 6, 7, 2, 3, 4, 5]
    assert [make(window=4, sink=0).slot(f) for f in range(6)] == [0, 1, 2, 3, 0, 1]


def test_write_rules_overwrite_append_gap():
    cache = make(window=9, sink=3)
    cache.layout(0, 3, True)
    cache.layout(0, 3, True)                          # overwrite the last chunk (context refresh)
    cache.layout(3, 6, True)                          # append right after it
    cache.layout(3, 6, True)
    for bad in (0, 4, 5):                             # neither the last chunk nor at/after the end
        with pytest.raises(ValueError, match="overwrite the last chunk"):
            cache.layout(bad, bad + 3, True)
    cache.layout(0, 3, False)                         # read-only plans never write, any start
    layout = cache.layout(9, 12, True)                # a gap (frames 6..8 never written) is allowed
    assert held(cache) == [0, 1, 2, 9, 10, 11]          # 9..11 took the ring slots of 3..5
    assert layout.write_slots.tolist() == [3, 4, 5]
    assert layout.key_pos.tolist() == [0, 1, 2, 9, 10, 11]     # window of stop 12: sink + frames >= 6
    assert (cache.last_start, cache.end) == (9, 12)


def test_chunk_larger_than_rolling_part_raises():
    cache = make(window=6, sink=2)
    with pytest.raises(ValueError, match="causal.window=6"):
        cache.layout(0, 5, True)


@pytest.mark.parametrize("window,sink,capacity,match", [
    (3, 3, None, r"causal\.window \(3\) must exceed causal\.sink"),
    (6, 0, 5, "capacity"),
])
def test_bad_sizes_raise(window, sink, capacity, match):
    with pytest.raises(ValueError, match=match):
        make(window, sink, capacity=capacity)


def test_read_is_prefix_slice_then_full_ring():
    cache = make(window=9, sink=3)
    assert cache.layout(0, 3, True).read == slice(0, 3)
    assert cache.layout(3, 6, True).read == slice(0, 6)
    layout = fill(cache, 15, start=6)
    assert layout.read == slice(0, 9)                 # full ring: every slot is read, in slot order
    assert layout.key_pos.tolist() == [0, 1, 2, 9, 10, 11, 12, 13, 14]
    assert layout.write_slots.tolist() == [6, 7, 8]
    assert held(cache) == [0, 1, 2, 9, 10, 11, 12, 13, 14]


def test_read_only_layout_reads_earlier_window_frames_by_index():
    cache = make(window=9, sink=3)
    fill(cache, 15)
    layout = cache.layout(15, 18, False)
    assert layout.write_slots is None
    assert isinstance(layout.read, torch.Tensor)
    assert layout.read.tolist() == [0, 1, 2, 6, 7, 8]          # sink + frames 12..14, not the chunk's own
    assert layout.key_pos.tolist() == [0, 1, 2, 12, 13, 14]
    assert layout.query_pos.tolist() == [15, 16, 17]
    assert held(cache) == [0, 1, 2, 9, 10, 11, 12, 13, 14]   # nothing committed


def test_relative_ranks_known_values():
    cache = make(window=9, sink=3, relative=True)
    fill(cache, 9)
    wrapped = cache.layout(9, 12, True)               # slots hold frames [0,1,2, 9,10,11, 6,7,8]
    assert wrapped.read == slice(0, 9)
    assert wrapped.key_pos.tolist() == [0, 1, 2, 6, 7, 8, 3, 4, 5]
    assert wrapped.query_pos.tolist() == [6, 7, 8]
    ro = cache.layout(12, 15, False)                  # cached [0,1,2, 9,10,11] + own [12,13,14]
    assert ro.key_pos.tolist() == [0, 1, 2, 3, 4, 5]
    assert ro.query_pos.tolist() == [6, 7, 8]
    first = make(window=9, sink=3, relative=True).layout(0, 3, False)
    assert first.key_pos.tolist() == [] and first.query_pos.tolist() == [0, 1, 2]


def test_absolute_positions_are_frame_indices():
    cache = make(window=9, sink=3)
    fill(cache, 9)
    layout = cache.layout(9, 12, True)
    assert layout.key_pos.tolist() == [0, 1, 2, 9, 10, 11, 6, 7, 8]
    assert layout.query_pos.tolist() == [9, 10, 11]


def test_written_values_are_read_back_in_key_pos_order():
    cache = make(window=9, sink=3, layers=2)
    for s in range(0, 18, 3):
        layout = cache.layout(s, s + 3, True)
        for layer in range(2):
            cache.write(layer, layout, frame_kv(range(s, s + 3)), -frame_kv(range(s, s + 3)))
        k, v = cache.read(1, layout)
        assert decode(k) == layout.key_pos.tolist() and decode(-v) == layout.key_pos.tolist()
    assert k.data_ptr() == cache.k[1].data_ptr()      # a prefix read is a view of the ring, not a copy
    ro = cache.layout(18, 21, False)
    k, _ = cache.read(0, ro)
    assert decode(k) == [0, 1, 2, 15, 16, 17]


def test_write_detaches():
    cache = make(window=6, sink=0)
    layout = cache.layout(0, 3, True)
    k = frame_kv([0, 1, 2]).requires_grad_(True)
    cache.write(0, layout, k * 2, k * 3)
    assert not cache.k[0].requires_grad and cache.k[0].grad_fn is None


def test_capacity_above_window_stores_more_but_reads_only_the_window():
    cache = make(window=6, sink=0, capacity=9)
    for s in range(0, 12, 3):
        layout = cache.layout(s, s + 3, True)
        cache.write(0, layout, frame_kv(range(s, s + 3)), frame_kv(range(s, s + 3)))
    assert held(cache) == list(range(3, 12))           # 9 frames kept
    assert isinstance(layout.read, torch.Tensor)                  # slots 6,7,8 then 0,1,2: not a prefix
    assert layout.read.tolist() == [6, 7, 8, 0, 1, 2]
    assert layout.key_pos.tolist() == list(range(6, 12))          # but only the 6-frame window is read
    assert decode(cache.read(0, layout)[0]) == list(range(6, 12))
    assert cache.k[0].shape == (1, HEADS, 9, TPF, D)


def test_capacity_with_sink_keeps_sink_and_window():
    cache = make(window=6, sink=2, capacity=8)
    layout = fill(cache, 15)
    assert held(cache) == [0, 1, 9, 10, 11, 12, 13, 14]
    assert layout.key_pos.tolist() == [0, 1, 11, 12, 13, 14]


def test_reset_forgets_frames():
    cache = make(window=9, sink=3)
    fill(cache, 12)
    cache.reset()
    assert held(cache) == [] and (cache.last_start, cache.end) == (-1, 0)
    assert cache.layout(0, 3, True).key_pos.tolist() == [0, 1, 2]
