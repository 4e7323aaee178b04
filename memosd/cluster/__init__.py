"""The cluster: daemons sharing one PostgreSQL vault: their membership, and the NATS bus that tells each of the others' commits."""
