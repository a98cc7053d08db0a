"""MongoDB side of connecto: client, embedded server, schema, data, tracking, graphs."""
