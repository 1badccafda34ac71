"""Bundles on disk: the atomic writer, the folder rules, the manifest, archives."""
