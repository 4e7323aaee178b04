"""The cluster: daemons sharing one PostgreSQL vault, told of each other's commits over a NATS bus."""
