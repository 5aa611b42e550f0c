"""Developer tooling: the `shardgate` console script, `shardgate dev`, `shardgate bench`. Not runtime code."""
