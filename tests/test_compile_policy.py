"""How training compiles (issue 36): failures are not hidden, and a partial last batch compiles no second graph."""

import torch
import torch._dynamo

from foundation.runtime import eager_unless, maybe_compile


def test_compiling_leaves_compilation_errors_visible():
    torch._dynamo.config.suppress_errors = False
    assert maybe_compile([torch.nn.Linear(2, 2)], True, torch.device("cpu"))
    assert torch._dynamo.config.suppress_errors is False  # a failed compile raises instead of running eager silently
    assert not maybe_compile([torch.nn.Linear(2, 2)], None, torch.device("cpu"))  # auto: only with CUDA


def test_a_partial_batch_runs_eagerly_instead_of_compiling_a_second_graph():
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    step = torch.compile(lambda x: (x * 2).sum(1), backend=counting_backend, dynamic=False)
    for batch in (8, 8, 5, 8):
        with eager_unless(batch == 8):
            out = step(torch.ones(batch, 3))
        assert torch.equal(out, torch.full((batch,), 6.0))
    assert len(graphs) == (1 if hasattr(torch.compiler, "set_stance") else 2)
