"""W in-process ranks for exchange tests: torch.distributed's get_rank, get_world_size and all_to_all_single
replaced by an in-memory all-to-all between threads; random expert placements and routings."""

import threading

import torch


def placement(num_experts, world, g):
    """Random owner per expert (every rank may own any number, including none)."""
    owner = torch.randint(0, world, (num_experts,), generator=g)
    local_index = torch.empty(num_experts, dtype=torch.long)
    num_local = []
    for r in range(world):
        mine = (owner == r).nonzero().flatten()
        local_index[mine] = torch.arange(len(mine))
        num_local.append(len(mine))
    return owner, local_index, num_local


def routing(tokens, num_experts, k, g):
    ids = torch.stack([torch.randperm(num_experts, generator=g)[:k] for _ in range(tokens)]) if tokens else \
        torch.zeros(0, k, dtype=torch.long)
    return ids, torch.rand(tokens, k, generator=g) + 0.1


class ThreadRanks:
    """torch.distributed's get_rank / get_world_size / all_to_all_single for W threads of one process."""

    def __init__(self, world):
        self.world, self.local = world, threading.local()
        self.barrier, self.box = threading.Barrier(world), [None] * world
        self.calls = 0

    def get_rank(self, group=None):
        return self.local.rank

    def get_world_size(self, group=None):
        return self.world

    def all_to_all_single(self, out, inp, output_split_sizes=None, input_split_sizes=None, group=None):
        me = self.local.rank
        sends = input_split_sizes or [inp.shape[0] // self.world] * self.world
        starts = [sum(sends[:r]) for r in range(self.world)]
        self.box[me] = (inp.clone(), sends, starts)
        self.barrier.wait()
        pieces = [b[s[me]:s[me] + n[me]] for b, n, s in self.box]
        assert output_split_sizes is None or [len(p) for p in pieces] == list(output_split_sizes)
        out.copy_(torch.cat(pieces))
        self.barrier.wait()
        if me == 0:
            self.calls += 1

    def install(self, monkeypatch) -> None:
        """Route torch.distributed's calls the exchange makes to these threads."""
        import torch.distributed as dist
        for name in ("get_rank", "get_world_size", "all_to_all_single"):
            monkeypatch.setattr(dist, name, getattr(self, name))

    def run(self, rank_main, timeout: float = 60) -> None:
        """rank_main(r) on W threads, r set as the thread's rank; the first error of any rank is raised here."""
        errors = []

        def main(r):
            try:
                self.local.rank = r
                rank_main(r)
            except BaseException as e:  # surfaced below, after every thread ended
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=main, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
        stuck = [r for r, t in enumerate(threads) if t.is_alive()]
        if stuck:  # a rank waits for a collective its peers never reached: free them, then fail
            self.barrier.abort()
            for t in threads:
                t.join(5)
            raise TimeoutError(f"ranks {stuck} did not finish within {timeout} s (a collective nobody else joined)")
        if errors:
            raise errors[0]
