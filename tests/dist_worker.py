"""A torch.distributed worker for test_importance, in its own light module: spawned children import only this."""
import torch
import torch.distributed as dist

from manu_lite.stats import NeuronStats, StatsTable


def all_reduce_worker(rank: int, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    try:
        acts = torch.full((rank + 1, 3), rank + 1.0)
        table = StatsTable({"language.0.down_proj": NeuronStats.from_activations(acts, 0.5),
                            "vision.0.fc2": NeuronStats.from_activations(-acts[:, :2], 0.5)})
        table.all_reduce_()
        # rank 0 saw one token of 1s, rank 1 two tokens of 2s: 3 tokens, sum 1 + 4 = 5, sum_sq 1 + 8 = 9.
        s = table["language.0.down_proj"]
        assert s.count.item() == 3 and s.sum.tolist() == [5.0] * 3 and s.sum_sq.tolist() == [9.0] * 3
        assert table["vision.0.fc2"].sum.tolist() == [-5.0] * 2 and table["vision.0.fc2"].count_above.tolist() == [3] * 2
    finally:
        dist.destroy_process_group()
