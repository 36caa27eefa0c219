module ghostwire/go_tls

go 1.19
