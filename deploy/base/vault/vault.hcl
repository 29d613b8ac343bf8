# One Vault server, integrated (raft) storage on its volume, TLS from cert-manager (Secret vault-tls).
ui            = false
disable_mlock = true
api_addr      = "https://vault.heater.svc:8200"
cluster_addr  = "https://127.0.0.1:8201"

storage "raft" {
  path    = "/vault/data"
  node_id = "vault-0"
}

listener "tcp" {
  address       = "0.0.0.0:8200"
  tls_cert_file = "/vault/tls/tls.crt"
  tls_key_file  = "/vault/tls/tls.key"
}
