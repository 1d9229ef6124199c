"""Block/depth layouts: cutting a rank's chunk by reading only its rows equals cutting it from the
whole tensor, for every rank of many grid shapes (no communication involved)."""

import itertools

import torch

from axolab.parallel.grid import Axis
from axolab.parallel.layout import BlockLayout, VectorLayout, padded_size

DUMMY_GROUP = object()  # layouts never communicate when cutting


def _axis(name, size, index):
    return Axis(name, size, index, tuple(range(size)), DUMMY_GROUP if size > 1 else None)


def test_reading_rows_equals_cutting_the_full_matrix():
    g = torch.Generator().manual_seed(0)
    for rows, cols, ry, cx, z in itertools.product((7, 12, 99), (4, 8), (1, 2, 4), (1, 2, 4),
                                                   (1, 2, 3, 8)):
        if cols % cx:
            continue
        full = torch.randn(rows, cols, generator=g)
        # By hand: rank (y, x) owns rows [y*lr, (y+1)*lr) of the zero-padded matrix and
        # columns [x*lc, (x+1)*lc); its flattened block is cut into z chunks of `chunk`.
        lr, lc = -(-rows // ry), cols // cx
        numel = lr * lc
        chunk = -(-numel // z)
        reads = []

        def read(r0, r1, c0, c1):
            reads.append((r0, r1, c0, c1))
            return full[r0:r1, c0:c1]

        pieces = {}
        for yi, xi, zi in itertools.product(range(ry), range(cx), range(z)):
            lay = BlockLayout(rows, cols, padded_size(rows, ry), _axis("y", ry, yi),
                              _axis("x", cx, xi), _axis("z", z, zi))
            where = (rows, cols, ry, cx, z, yi, xi, zi)
            want = lay.shard_from_full(full)
            assert want.shape == (chunk,), where
            # The rows this chunk spans: from the row holding its first element to the row
            # holding its last one, less the padding rows, which are never read.
            f0, f1 = zi * chunk, min((zi + 1) * chunk, numel)
            first = yi * lr + f0 // lc
            stop = min(yi * lr + -(-f1 // lc), rows) if f1 > f0 else first
            spanned = max(0, stop - first)
            assert spanned <= -(-chunk // lc) + 1, where  # never more than the chunk + one row

            def check_reads(made, most_rows):
                for r0, r1, c0, c1 in made:
                    assert first <= r0 < r1 <= stop, (where, made, first, stop)
                    assert (c0, c1) == (xi * lc, (xi + 1) * lc), (where, made)
                    assert r1 - r0 <= most_rows, (where, made)
                assert sum(r1 - r0 for r0, r1, _, _ in made) <= spanned, (where, made, spanned)

            reads.clear()
            got = lay.shard_from_reader(read, full.dtype)
            check_reads(list(reads), rows)
            assert torch.equal(got, want), where
            blocked = torch.full_like(want, float("nan"))  # every element must be written
            reads.clear()
            lay.fill_from_reader(blocked, read, block_rows=2)
            check_reads(list(reads), 2)  # bounded blocks of rows
            assert torch.equal(blocked, want), ("blocked",) + where
            pieces[(yi, xi, zi)] = got
        # The chunks tile the zero-padded matrix exactly once: glue each block's z chunks,
        # drop the chunk padding (which must be zero) and put the block at its place.
        padded = torch.cat([full, torch.zeros(ry * lr - rows, cols)])
        rebuilt = torch.full((ry * lr, cols), float("nan"))
        for yi, xi in itertools.product(range(ry), range(cx)):
            flat = torch.cat([pieces[(yi, xi, zi)] for zi in range(z)])
            assert flat.numel() == z * chunk and not flat[numel:].any(), (rows, cols, ry, cx, z)
            rebuilt[yi * lr:(yi + 1) * lr, xi * lc:(xi + 1) * lc] = flat[:numel].view(lr, lc)
        assert torch.equal(rebuilt, padded), (rows, cols, ry, cx, z)


def test_vector_layout_pads_and_trims():
    full = torch.arange(10.0)
    parts = []
    for i in range(4):
        lay = VectorLayout(12, _axis("y", 4, i), true_size=10)
        part = lay.shard_from_full(full)
        assert torch.equal(part, lay.shard_from_reader(lambda a, b: full[a:b]))
        parts.append(part)
    assert torch.equal(torch.cat(parts), torch.cat([full, torch.zeros(2)]))


def test_chunk_pairs_put_each_rank_s_chunks_side_by_side_and_back():
    """A Z bucket (axolab.parallel.prefetch, depth_grads) holds its members' chunks side by
    side, rank z's in row z: written through chunk_pairs, row z must be rank z's chunk of
    every member as the layout pads and cuts a block, and reading back must give the block.
    The buffer starts as NaN: the padding is zeroed by depth_grads._zero_padding alone, as
    the reduce-scatter buckets are built."""
    from axolab.parallel.depth_grads import _zero_padding
    from axolab.parallel.layout import chunk_pairs

    g = torch.Generator().manual_seed(0)
    z = 3
    blocks = [torch.randn(4, 5, generator=g), torch.randn(2, 6, generator=g),
              torch.randn(3, 3, generator=g), torch.randn(1, 4, generator=g)]
    # 20, 12, 9, 4 elements: padded to 21, 12, 9, 6 (the last one's row 2 all padding)
    chunks = [padded_size(b.numel(), z) // z for b in blocks]
    offsets = [sum(chunks[:i]) for i in range(len(chunks))]
    buffer = torch.full((z, sum(chunks)), float("nan"))
    for block, start, chunk in zip(blocks, offsets, chunks):
        rows = buffer[:, start:start + chunk]
        for src, dst in chunk_pairs(block.reshape(-1), rows):
            dst.copy_(src)
        _zero_padding(rows, block.numel())
    for rank in range(z):
        expected = torch.cat([torch.nn.functional.pad(b.reshape(-1), (0, c * z - b.numel()))
                              [rank * c:(rank + 1) * c] for b, c in zip(blocks, chunks)])
        assert torch.equal(buffer[rank], expected)
    for block, start, chunk in zip(blocks, offsets, chunks):
        back = torch.empty_like(block)
        for dst, src in chunk_pairs(back.view(-1), buffer[:, start:start + chunk]):
            dst.copy_(src)
        assert torch.equal(back, block)


def test_unpermute_undoes_the_split_order_of_sections():
    from axolab.parallel.layout import section_permutation, unpermute

    stored = torch.arange(24.0).view(12, 2)  # three sections of 4 rows, split in two parts
    perm = section_permutation((4, 4, 4), 2)
    split = stored[perm]
    # Part 0 holds the first half of each section, in section order.
    assert split[:6, 0].tolist() == [0.0, 2.0, 8.0, 10.0, 16.0, 18.0]
    assert torch.equal(unpermute(split, perm), stored)
    assert unpermute(stored, None) is stored
