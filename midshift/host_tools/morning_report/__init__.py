"""The morning report of a business day (issue 17): ``figures.py`` computes, ``page.py``
renders; ``python -m midshift.host_tools report`` writes both."""
