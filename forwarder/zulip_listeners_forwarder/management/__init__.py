"""Django management commands shipped by the forwarder."""
