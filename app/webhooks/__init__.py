"""Outbound webhooks: endpoints, Standard Webhooks signing, delivery from the event outbox."""
