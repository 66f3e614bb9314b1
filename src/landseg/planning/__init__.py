"""Planning a command before it runs: reading and checking the config and its data,
collecting every refusal, without writing anything."""
