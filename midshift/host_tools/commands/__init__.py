"""The host CLI's commands, one module each: ``register(sub)`` adds its subparser and sets
``run`` (a function of the parsed arguments returning the exit status)."""
