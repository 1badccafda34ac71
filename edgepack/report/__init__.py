"""Gate rules, the data a report shows, and its renderings (terminal, HTML, SVG,
Markdown, JUnit)."""
