"""Built-in plugins. Each module is registered through the `modelherd` entry-point group."""
