"""The portable core: journal, record codec, clocks, batching and policy state machines.

Imports only what MicroPython also has (struct, binascii, hashlib, json, time, os, errno,
collections) and performs no I/O of its own: storage, clocks and randomness are handed in.
"""
