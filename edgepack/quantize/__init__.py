"""The accuracy-aware int8 loop every backend's static int8 goes through."""

from edgepack.quantize.search import Budget, SearchResult, Step, search

__all__ = ["Budget", "SearchResult", "Step", "search"]
