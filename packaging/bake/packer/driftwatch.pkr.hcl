# Packer template: a Debian 12 AMI with driftwatch installed and baked, registered with
# the collector.
#
# EXAMPLE, NOT TESTED HERE: the build machines have neither Packer nor a cloud account.
# Every step it runs on the VM is the one packaging/bake/mmdebstrap.sh runs and tests
# (install the .deb, then `driftwatch-bake` last); the registration is the command
# driftwatch-bake prints.
#
#   packer init packaging/bake/packer
#   packer build \
#     -var driftwatch_deb=target/packages/driftwatch_0.1.0_amd64.deb \
#     -var sign_key=/secrets/pipeline.key \
#     -var collector_url=https://collector.example.org:8443 \
#     -var collector_ca=/secrets/collector-ca.pem \
#     -var enrollment_token_file=/secrets/enrollment.token \
#     -var operator_token_file=/secrets/operator.token \
#     packaging/bake/packer
#
# The image id that driftwatch records and the collector registers is the AMI *name*
# (known before the AMI exists); hosts report it, the collector compares its baseline.

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "driftwatch_deb" {
  type        = string
  description = "The agent package built by packaging/build.sh."
}
variable "sign_key" {
  type        = string
  sensitive   = true
  description = "The pipeline's ed25519 private key (driftwatch key generate); never stays in the image."
}
variable "collector_url" {
  type = string
}
variable "collector_ca" {
  type        = string
  description = "The CA of the collector's certificate (its ca.pem)."
}
variable "enrollment_token_file" {
  type        = string
  sensitive   = true
  description = "The collector's enrollment token, baked for the fleet (or delivered by cloud-init.yaml instead)."
}
variable "operator_token_file" {
  type        = string
  sensitive   = true
  description = "The collector's operator token, used by the pipeline to register the image."
}
variable "region" {
  type    = string
  default = "eu-west-1"
}

locals {
  image_id = "web-${formatdate("YYYY.MM.DD-hhmm", timestamp())}"
}

source "amazon-ebs" "web" {
  region        = var.region
  instance_type = "t3.small"
  ssh_username  = "admin"
  ami_name      = local.image_id
  source_ami_filter {
    filters = {
      name                = "debian-12-amd64-*"
      virtualization-type = "hvm"
    }
    owners      = ["136693071363"] # Debian
    most_recent = true
  }
}

build {
  sources = ["source.amazon-ebs.web"]

  # 1. Everything the image is made of: the agent package, then the application.
  provisioner "file" {
    source      = var.driftwatch_deb
    destination = "/tmp/driftwatch.deb"
  }
  provisioner "shell" {
    inline = [
      "sudo apt-get update",
      "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y /tmp/driftwatch.deb",
      "rm /tmp/driftwatch.deb",
      # … the application's packages and configuration go here …
    ]
  }

  # 2. The agent's fleet-wide configuration: where to report and how to enroll.
  provisioner "file" {
    source      = var.collector_ca
    destination = "/tmp/collector-ca.pem"
  }
  provisioner "file" {
    source      = var.enrollment_token_file
    destination = "/tmp/enroll.token"
  }
  provisioner "shell" {
    inline = [
      "sudo install -m 0644 /tmp/collector-ca.pem /etc/driftwatch/collector-ca.pem",
      "sudo install -m 0600 /tmp/enroll.token /etc/driftwatch/enroll.token",
      "rm /tmp/collector-ca.pem /tmp/enroll.token",
      "printf '\\n[collector]\\nurl = \"%s\"\\nca_file = \"/etc/driftwatch/collector-ca.pem\"\\nenrollment_token_file = \"/etc/driftwatch/enroll.token\"\\n' '${var.collector_url}' | sudo tee -a /etc/driftwatch/agent.toml >/dev/null",
    ]
  }

  # 3. LAST: the bake. Anything changed after it is drift on every host. Packer's
  #    temporary SSH key is removed first: hosts are launched without a key pair
  #    (authorized_keys is critical in the built-in policy; use SSM to get in).
  provisioner "file" {
    source      = var.sign_key
    destination = "/tmp/pipeline.key"
  }
  provisioner "shell" {
    inline = [
      "sudo apt-get clean",
      ": | sudo tee /home/admin/.ssh/authorized_keys >/dev/null",
      "sudo SOURCE_DATE_EPOCH=$(date +%s) driftwatch-bake --image-id '${local.image_id}' --sign-key /tmp/pipeline.key",
      "shred -u /tmp/pipeline.key",
    ]
  }

  # 4. The baseline leaves the image, and the pipeline registers it with the collector
  #    before any host boots from the image.
  provisioner "file" {
    direction   = "download"
    source      = "/usr/lib/driftwatch/baseline"
    destination = "build/${local.image_id}.baseline"
  }
  post-processor "shell-local" {
    inline = [
      "driftwatch-collector image register --url '${var.collector_url}' --ca '${var.collector_ca}' --token-file '${var.operator_token_file}' --image-id '${local.image_id}' --baseline 'build/${local.image_id}.baseline'",
    ]
  }
}
