module ghostwire/go_proxy

go 1.19
