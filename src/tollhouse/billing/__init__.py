"""The billing job: meter -> ledger -> invoices. Never imports grpc or the Envoy edge code."""
