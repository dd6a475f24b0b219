//! The distribution API's requests: manifests, referrers, tags, blobs and
//! upload sessions.

use super::*;

/// What `upload_start` achieved.
pub(crate) enum UploadStart {
    /// The blob was mounted from another repository: nothing to upload.
    Mounted,
    /// An upload session was opened at this URL.
    Session(Url),
}

/// A manifest PUT's answer.
pub(crate) struct ManifestPut {
    /// The digest the registry computed, if it said.
    pub digest: Option<Digest>,
}

/// One page of a referrers list: the index's bytes and the next page.
pub(crate) struct ReferrersPage {
    pub index: Bytes,
    pub next: Option<String>,
}

/// What a manifest HEAD tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// The target of a `Link: <...>; rel="next"` header (RFC 8288), as
/// registries paginate tag lists.
pub(crate) fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p == "rel=\"next\"" || p == "rel=next"
        });
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_owned())
    })
}

impl RegistryClient {
    /// HEAD or GET a manifest by tag or digest, accepting every manifest
    /// type Lifeboat copies: the answer, or `None` if absent.
    pub(super) async fn manifest_request(
        &self,
        method: Method,
        operation: &str,
        repository: &str,
        reference: &str,
        scopes: &[String],
    ) -> Result<Option<Response>, TransferError> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let response = self
            .send(operation, scopes, &found_or_absent, &|| {
                Ok(self
                    .request(method.clone(), url.clone())
                    .header(header::ACCEPT, ACCEPT_MANIFESTS))
            })
            .await?;
        Ok((response.status() != StatusCode::NOT_FOUND).then_some(response))
    }

    /// HEAD a manifest by tag or digest: its digest, or `None` if absent.
    pub(crate) async fn manifest_digest(
        &self,
        repository: &str,
        reference: &str,
        scopes: &[String],
    ) -> Result<Option<ManifestHead>, TransferError> {
        let Some(response) = self
            .manifest_request(Method::HEAD, "manifest HEAD", repository, reference, scopes)
            .await?
        else {
            return Ok(None);
        };
        let media_type = header_str(response.headers(), header::CONTENT_TYPE).unwrap_or_default();
        let size = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match header_str(response.headers(), "docker-content-digest")
            .and_then(|d| Digest::parse(&d).ok())
        {
            Some(digest) => Ok(Some(ManifestHead {
                digest,
                media_type,
                size,
            })),
            // Some registries omit the header on HEAD: fetch and hash.
            None => Ok(self.manifest_get(repository, reference, scopes).await?.map(
                |(bytes, media_type)| ManifestHead {
                    digest: sha256_digest(&bytes),
                    media_type,
                    size: bytes.len() as u64,
                },
            )),
        }
    }

    /// GET a manifest's bytes exactly as stored, or `None` if absent.
    pub(crate) async fn manifest_get(
        &self,
        repository: &str,
        reference: &str,
        scopes: &[String],
    ) -> Result<Option<(Bytes, String)>, TransferError> {
        let Some(response) = self
            .manifest_request(Method::GET, "manifest GET", repository, reference, scopes)
            .await?
        else {
            return Ok(None);
        };
        let media_type = header_str(response.headers(), header::CONTENT_TYPE).unwrap_or_default();
        let body =
            read_bounded(&self.name, BodyKind::Manifest, response, self.body_timeout).await?;
        Ok(Some((body, media_type)))
    }

    /// PUT a manifest under a tag or its digest; returns the digest the
    /// registry computed.
    pub(crate) async fn manifest_put(
        &self,
        repository: &str,
        reference: &str,
        bytes: &Bytes,
        media_type: &str,
    ) -> Result<ManifestPut, TransferError> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let scopes = [push_scope(repository)];
        let response = self
            .send("manifest PUT", &scopes, &|s| s.is_success(), &|| {
                Ok(self
                    .request(Method::PUT, url.clone())
                    .header(header::CONTENT_TYPE, media_type)
                    .body(bytes.clone()))
            })
            .await?;
        // `OCI-Subject`: the registry indexed the manifest's `subject` for
        // its referrers API (OCI distribution 1.1).
        if response.headers().contains_key("oci-subject") {
            self.learn_referrers_api(true);
        }
        Ok(ManifestPut {
            digest: header_str(response.headers(), "docker-content-digest")
                .and_then(|d| Digest::parse(&d).ok()),
        })
    }

    /// One page of the OCI 1.1 referrers list of `subject`
    /// (`GET /v2/<name>/referrers/<digest>`, or the `Link` of the previous
    /// page). `None` when the registry has no referrers API: it answers 404
    /// (the spec forbids a 404 from a registry that has one) or 405. What
    /// the answer said is remembered for this registry.
    pub(crate) async fn referrers_page(
        &self,
        repository: &str,
        subject: &Digest,
        page: Option<&str>,
    ) -> Result<Option<ReferrersPage>, TransferError> {
        let path = match page {
            Some(link) => link.trim_start_matches('/').to_owned(),
            None => format!("v2/{repository}/referrers/{subject}"),
        };
        let url = self.url(&path)?;
        let scopes = [pull_scope(repository)];
        let absent =
            |s: StatusCode| s == StatusCode::NOT_FOUND || s == StatusCode::METHOD_NOT_ALLOWED;
        let response = self
            .send(
                "referrers GET",
                &scopes,
                &|s| s.is_success() || absent(s),
                &|| {
                    Ok(self
                        .request(Method::GET, url.clone())
                        .header(header::ACCEPT, crate::manifest::OCI_INDEX))
                },
            )
            .await?;
        if absent(response.status()) {
            self.learn_referrers_api(false);
            return Ok(None);
        }
        self.learn_referrers_api(true);
        let next = response
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let index =
            read_bounded(&self.name, BodyKind::Manifest, response, self.body_timeout).await?;
        Ok(Some(ReferrersPage { index, next }))
    }

    /// One page of a repository's tags (`GET /v2/<name>/tags/list`), from
    /// `path_and_query` (the first page, or the `Link` of the previous
    /// one). Returns the tags and the next page's path, if any. A
    /// repository the registry does not know has no tags.
    pub(crate) async fn tags_page(
        &self,
        repository: &str,
        path_and_query: &str,
    ) -> Result<(Vec<String>, Option<String>), TransferError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let url = self.url(path_and_query.trim_start_matches('/'))?;
        let scopes = [pull_scope(repository)];
        let response = self
            .send("tags list", &scopes, &found_or_absent, &|| {
                Ok(self.request(Method::GET, url.clone()))
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), None));
        }
        let next = response
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let body = read_bounded(&self.name, BodyKind::TagPage, response, self.body_timeout).await?;
        let list: TagList = serde_json::from_slice(&body).map_err(|e| TransferError::Protocol {
            registry: self.name.clone(),
            detail: format!("tag list of {repository} is not JSON: {e}"),
        })?;
        Ok((list.tags.unwrap_or_default(), next))
    }

    /// DELETE a manifest by digest (`202`). `false` when the registry does
    /// not have it. A registry with deletes disabled answers 405, which is
    /// an error naming the operation.
    pub(crate) async fn manifest_delete(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, TransferError> {
        self.manifest_delete_reference(repository, digest.as_str())
            .await
    }

    /// DELETE a manifest by digest or tag (distribution refuses tags; some
    /// registries keep a tag after its manifest was deleted by digest, and
    /// only deleting the tag removes it).
    pub(crate) async fn manifest_delete_reference(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<bool, TransferError> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let scopes = [delete_scope(repository)];
        let response = self
            .send("manifest DELETE", &scopes, &found_or_absent, &|| {
                Ok(self.request(Method::DELETE, url.clone()))
            })
            .await?;
        Ok(response.status().is_success())
    }

    /// HEAD a blob: whether the repository has it.
    pub(crate) async fn blob_exists(
        &self,
        repository: &str,
        digest: &Digest,
        scopes: &[String],
    ) -> Result<bool, TransferError> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        let response = self
            .send("blob HEAD", scopes, &found_or_absent, &|| {
                Ok(self.request(Method::HEAD, url.clone()))
            })
            .await?;
        Ok(response.status().is_success())
    }

    /// GET a blob from `offset` on, as a stream. `Ok(None)` if absent.
    /// The stream starts at `offset` even if the registry ignores `Range`.
    pub(crate) async fn blob_get(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<
        Option<impl Stream<Item = Result<Bytes, TransferError>> + Send + 'static>,
        TransferError,
    > {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        let scopes = [pull_scope(repository)];
        let response = self
            .send_streaming("blob GET", &scopes, &found_or_absent, &|| {
                let request = self.request(Method::GET, url.clone());
                Ok(if offset > 0 {
                    request.header(header::RANGE, format!("bytes={offset}-"))
                } else {
                    request
                })
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let already_skipped = response.status() == StatusCode::PARTIAL_CONTENT;
        let registry = self.name.clone();
        let mut watch = self.blob_floor.map(ThroughputWatch::new);
        let stream = response.bytes_stream().map(move |chunk| {
            let chunk = chunk.map_err(|e| TransferError::Interrupted {
                registry: registry.clone(),
                detail: error_chain(&e.without_url()),
            })?;
            if let Some(watch) = watch.as_mut() {
                watch
                    .record(chunk.len())
                    .map_err(|detail| TransferError::TooSlow {
                        registry: registry.clone(),
                        detail: format!("blob download: {detail}"),
                    })?;
            }
            Ok(chunk)
        });
        let stream: crate::BlobStream<TransferError> = Box::pin(stream);
        Ok(Some(if already_skipped || offset == 0 {
            stream
        } else {
            crate::source::skip_prefix(stream, offset)
        }))
    }

    /// Opens an upload session, or mounts the blob from `mount_from` in the
    /// same registry when that works (201).
    pub(crate) async fn upload_start(
        &self,
        repository: &str,
        mount_from: Option<(&Digest, &str)>,
    ) -> Result<UploadStart, TransferError> {
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        let mut scopes = vec![push_scope(repository)];
        if let Some((digest, from)) = mount_from {
            url.query_pairs_mut()
                .append_pair("mount", digest.as_str())
                .append_pair("from", from);
            scopes.push(pull_scope(from));
        }
        let response = self
            .send(
                "upload start",
                &scopes,
                &|s| s == StatusCode::CREATED || s == StatusCode::ACCEPTED,
                &|| {
                    Ok(self
                        .request(Method::POST, url.clone())
                        .header(header::CONTENT_LENGTH, 0))
                },
            )
            .await?;
        if response.status() == StatusCode::CREATED {
            if mount_from.is_some() {
                self.mounts_work.store(true, Ordering::Relaxed);
            }
            return Ok(UploadStart::Mounted);
        }
        Ok(UploadStart::Session(self.location(&response)?))
    }

    pub(super) fn location(&self, response: &Response) -> Result<Url, TransferError> {
        let location = header_str(response.headers(), header::LOCATION).ok_or_else(|| {
            TransferError::Protocol {
                registry: self.name.clone(),
                detail: "upload response without Location".into(),
            }
        })?;
        let url = self
            .base
            .join(&location)
            .map_err(|_| TransferError::Protocol {
                registry: self.name.clone(),
                detail: "upload Location is not a URL".into(),
            })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TransferError::Protocol {
                registry: self.name.clone(),
                detail: format!("upload Location has scheme {:?}", url.scheme()),
            });
        }
        Ok(url)
    }

    /// Appends a streamed body to an upload session (PATCH, chunked
    /// transfer encoding, so the body may end early and cleanly). Returns
    /// the session URL for the next request and the bytes the registry now
    /// holds, if it said.
    pub(crate) async fn upload_patch(
        &self,
        session: &Url,
        repository: &str,
        body: reqwest::Body,
    ) -> Result<(Url, Option<u64>), TransferError> {
        let scopes = [push_scope(repository)];
        let mut request = self
            .request(Method::PATCH, session.clone())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(auth) = self.authorization_for(session, &scopes).await? {
            request = request.header(header::AUTHORIZATION, auth);
        }
        self.count_request();
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.status_error("upload chunk", response).await);
        }
        let received = range_end(response.headers());
        Ok((self.location(&response)?, received))
    }

    /// Commits an upload session under `digest`, sending the last `body`
    /// bytes with it (empty when everything went by PATCH).
    pub(crate) async fn upload_commit(
        &self,
        session: &Url,
        repository: &str,
        digest: &Digest,
        body: Bytes,
    ) -> Result<(), TransferError> {
        let scopes = [push_scope(repository)];
        let mut url = session.clone();
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let mut request = self
            .request(Method::PUT, url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, body.len())
            .body(body);
        if let Some(auth) = self.authorization_for(session, &scopes).await? {
            request = request.header(header::AUTHORIZATION, auth);
        }
        self.count_request();
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        if response.status() != StatusCode::CREATED {
            return Err(self.status_error("upload commit", response).await);
        }
        Ok(())
    }

    /// How many bytes an upload session holds, and its current URL.
    pub(crate) async fn upload_status(
        &self,
        session: &Url,
        repository: &str,
    ) -> Result<(u64, Url), TransferError> {
        let scopes = [push_scope(repository)];
        let response = self
            .send(
                "upload status",
                &scopes,
                &|s| s == StatusCode::NO_CONTENT,
                &|| Ok(self.request(Method::GET, session.clone())),
            )
            .await?;
        let received = range_end(response.headers()).unwrap_or(0);
        Ok((
            received,
            self.location(&response).unwrap_or_else(|_| session.clone()),
        ))
    }

    /// Abandons an upload session; best effort (the registry purges stale
    /// sessions itself eventually).
    pub(crate) async fn upload_cancel(&self, session: &Url, repository: &str) {
        let scopes = [push_scope(repository)];
        let auth = self
            .authorization_for(session, &scopes)
            .await
            .ok()
            .flatten();
        let mut request = self.request(Method::DELETE, session.clone());
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        self.count_request();
        if let Err(e) = request.send().await {
            tracing::debug!(registry = %self.name, error = %error_chain(&e.without_url()), "upload cancel failed");
        }
    }
}

/// An answer that says whether the object is there: 2xx, or 404 (absent),
/// as opposed to an error to retry or report.
pub(super) fn found_or_absent(status: StatusCode) -> bool {
    status.is_success() || status == StatusCode::NOT_FOUND
}

/// Bytes held by an upload session, from `Range: 0-<last byte>`.
/// Distribution says `0-0` for both an empty session and one byte; reading
/// it as empty is safe: the caller then restarts rather than resumes.
pub(super) fn range_end(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::RANGE)
        .and_then(|r| {
            r.split_once('-')
                .and_then(|(_, end)| end.parse::<u64>().ok())
        })
        // `end` is remote input: u64::MAX must not overflow.
        .and_then(|end| {
            if end == 0 {
                Some(0)
            } else {
                end.checked_add(1)
            }
        })
}

pub(super) fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_are_followed_only_for_rel_next() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=x&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x&n=2")
        );
        assert_eq!(
            next_link(r#"</prev>; rel="prev", </v2/a/tags/list?last=y>; rel=next"#).as_deref(),
            Some("/v2/a/tags/list?last=y")
        );
        assert_eq!(next_link(r#"</v2/a/tags/list>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn range_ends_from_the_registry_cannot_overflow() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::RANGE,
            HeaderValue::from_static("0-18446744073709551615"),
        );
        assert_eq!(range_end(&headers), None);
        headers.insert(header::RANGE, HeaderValue::from_static("0-99"));
        assert_eq!(range_end(&headers), Some(100));
    }
}
