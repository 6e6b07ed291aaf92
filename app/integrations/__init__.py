"""Payment providers behind one seam: ``base.PaymentProvider``; ``registry.get(name)``."""
