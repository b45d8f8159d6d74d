"""Hosts: where the model and the KV store run (see ``base.Host``)."""
