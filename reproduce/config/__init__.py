"""Options, the runtime and the run config: every user-settable key and the hashed RunConfig."""
