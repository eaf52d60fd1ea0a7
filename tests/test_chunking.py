from focus_core.chunking import plan_chunks


def test_chunks_are_counted_from_the_start_of_memory():
    ids = list(range(100, 200))  # 100 tokens
    plan = plan_chunks(ids, chunk_size=16, local_window=20, dynamic_prompt_len=8, bos_token_id=1)
    assert plan.local == tuple(range(180, 200))
    assert plan.dynamic_prompt == tuple(range(192, 200))
    assert [len(c) for c in plan.chunks] == [16, 16, 16, 16, 16]
    assert plan.chunks[0] == tuple(range(100, 116))
    assert sum(plan.chunks, ()) == tuple(range(100, 180))


def test_shared_document_gives_the_same_leading_chunks():
    doc = list(range(1000, 1100))
    a = plan_chunks(doc + [5, 6, 7], chunk_size=16, local_window=10, dynamic_prompt_len=4, bos_token_id=None)
    b = plan_chunks(
        doc + [8, 9, 10, 11, 12, 13], chunk_size=16, local_window=10, dynamic_prompt_len=4, bos_token_id=None
    )
    assert a.chunks[:5] == b.chunks[:5]
    assert a.chunks[-1] != b.chunks[-1]


def test_leading_bos_is_dropped_from_memory():
    ids = [1] + list(range(100, 150))
    plan = plan_chunks(ids, chunk_size=8, local_window=10, dynamic_prompt_len=4, bos_token_id=1)
    assert plan.chunks[0][0] == 100
    assert plan.memory_tokens == 40
