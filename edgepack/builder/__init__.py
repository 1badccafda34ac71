"""Plan the (target, precision) units of a build, run each isolated, pick auto's winner."""
