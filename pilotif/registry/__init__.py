"""The rendezvous server: identities, names, addresses, trust, hole punching and relay."""
