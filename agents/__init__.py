"""Built-in agents, registered through the `modelherd` entry-point group like any plugin."""
