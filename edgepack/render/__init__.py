"""Renderings of validate and report results: JUnit XML, markdown, terminal, HTML."""
